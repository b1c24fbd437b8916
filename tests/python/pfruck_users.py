"""Drives the gateway with the real `pfruck-contabo` client, as a team would.

Usage: python pfruck_users.py GATEWAY_URL ADMIN_KEY READONLY_KEY
Exits non-zero (with the traceback) on the first thing that does not parse or does not match.
"""
import sys
import uuid

import pfruck_contabo
from pfruck_contabo.models.create_user_request import CreateUserRequest
from pfruck_contabo.models.update_user_request import UpdateUserRequest

url, admin_key, readonly_key = sys.argv[1:4]


def api(key):
    configuration = pfruck_contabo.Configuration(host=url, access_token=key)
    return pfruck_contabo.ApiClient(configuration)


def rid():
    return str(uuid.uuid4())


with api(admin_key) as client:
    users = pfruck_contabo.UsersApi(client)
    created = users.create_user(
        rid(),
        CreateUserRequest(first_name="Ada", last_name="Lovelace", email="ada@example.com",
                          enabled=True, totp=False, locale="en"),
    )
    user_id = created.data[0].user_id
    listed = users.retrieve_user_list(rid(), page=1, size=10)
    assert any(u.user_id == user_id for u in listed.data), listed
    assert listed.pagination.total_elements >= 2, listed.pagination
    users.update_user(rid(), user_id, UpdateUserRequest(first_name="Grace"))
    one = users.retrieve_user(rid(), user_id)
    assert one.data[0].first_name == "Grace", one
    client_info = users.retrieve_user_client(rid())
    assert client_info.data[0].secret != "[REDACTED]", "admins see the secret"
    rotated = users.generate_client_secret(rid())
    assert rotated.data[0].secret
    is_set = pfruck_contabo.InternalApi(client).retrieve_user_is_password_set(rid(), user_id=user_id)
    assert is_set.data[0].is_password_set is True, is_set

    # The token grant after rotation still works: the gateway adopted the new secret.
    after = users.retrieve_user(rid(), user_id)
    assert after.data[0].user_id == user_id

    instances = pfruck_contabo.InstancesApi(client)
    from pfruck_contabo.models.create_instance_request import CreateInstanceRequest
    made = instances.create_instance(rid(), CreateInstanceRequest(period=1, display_name="py"))
    instance_id = made.data[0].instance_id
    # retrieve_instance / retrieve_instances_list are not called: pfruck-contabo 2.0.0 validates
    # cancelDate against the literal regex "yyyy-mm-dd", which no real date matches (client bug).
    assert instance_id > 0

    users.delete_user(rid(), user_id)
    try:
        users.retrieve_user(rid(), user_id)
        raise AssertionError("a deleted user was found")
    except pfruck_contabo.ApiException as e:
        assert e.status == 404, e

with api(readonly_key) as client:
    users = pfruck_contabo.UsersApi(client)
    client_info = users.retrieve_user_client(rid())
    assert client_info.data[0].secret == "[REDACTED]", "readonly sees the secret redacted"
    try:
        users.create_user(rid(), CreateUserRequest(email="x@example.com", enabled=True, totp=False, locale="en"))
        raise AssertionError("readonly created a user")
    except pfruck_contabo.ApiException as e:
        assert e.status == 403, e
        assert "readonly" in e.body, e.body

print("pfruck-contabo: all calls parsed and matched")
