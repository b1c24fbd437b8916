//! The cache across replicas: invalidations travel over the real Redis, and a replica that loses
//! Redis keeps serving with the short fallback TTL, then recovers.
//!
//! Needs GATEWAY_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379; .ci/run sets it) for the two-process
//! test, and the `redis-server` binary for the outage test; without them the tests say they did
//! not run.

mod common;

use std::time::{Duration, Instant};

use common::{
    GatewayProcess, PrivateRedis, admin_client_block, announce_skip, free_port, http,
    spawn_gateway_process, test_redis_url,
};
use contabo_gateway::sandbox::{Sandbox, SandboxOptions};

async fn cache_stats(url: &str, key: &str) -> serde_json::Value {
    http()
        .get(format!("{url}/_gateway/cache"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// PATCHes the sandbox owner's first name through the gateway (a write that invalidates).
async fn rename_owner(gw: &common::TestGateway, key: &str, first_name: &str) {
    let user_id = gw.sandbox().owner_id();
    let patched = gw
        .request(reqwest::Method::PATCH, &format!("/v1/users/{user_id}"), key)
        .json(&serde_json::json!({"firstName": first_name}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
}

async fn wait_for_redis(url: &str, key: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = cache_stats(url, key).await;
        if stats["redis"] == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis never became {expected}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn first_name(
    client: &reqwest::Client,
    process: &GatewayProcess,
    key: &str,
    user_id: &str,
) -> (String, String) {
    let response = client
        .get(format!("{}/v1/users/{user_id}", process.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        body["data"][0]["firstName"].as_str().unwrap().to_string(),
        status,
    )
}

#[tokio::test]
async fn a_write_through_one_replica_invalidates_the_other() {
    let Some(redis_url) = test_redis_url() else {
        announce_skip(
            "the two-replica cache test on Redis",
            "GATEWAY_TEST_REDIS_URL is not set",
        );
        return;
    };
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let user_id = sandbox.state.owner_id();
    let dir = tempfile::tempdir().unwrap();
    let (key, block) = admin_client_block("replica-test");
    let channel = format!("test-invalidation-{}", uuid::Uuid::new_v4());
    let config =
        format!("[cache]\nredis_url = \"{redis_url}\"\nredis_channel = \"{channel}\"\n\n{block}");
    let a = spawn_gateway_process(&sandbox, &config, dir.path(), None);
    let b = spawn_gateway_process(&sandbox, &config, dir.path(), None);
    wait_for_redis(&a.url, &key, "connected").await;
    wait_for_redis(&b.url, &key, "connected").await;

    let client = http();
    let mut delays = Vec::new();
    let mut stale_reads = 0;
    for round in 0..20 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        first_name(&client, reader, &key, &user_id).await;
        let (_, status) = first_name(&client, reader, &key, &user_id).await;
        assert_eq!(status, "contabo-gateway; hit", "the reader holds an entry");
        let name = format!("name-{round}");
        let patched = client
            .patch(format!("{}/v1/users/{user_id}", writer.url))
            .bearer_auth(&key)
            .json(&serde_json::json!({"firstName": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(patched.status(), 200);
        let written = Instant::now();
        let mut polls = 0;
        loop {
            polls += 1;
            let (seen, _) = first_name(&client, reader, &key, &user_id).await;
            if seen == name {
                delays.push(written.elapsed());
                stale_reads += polls - 1;
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(1),
                "the other replica kept the old value"
            );
        }
    }
    delays.sort();
    let report = format!(
        "cross-replica invalidation over Redis: {} writes, {stale_reads} reads of the old value \
         on the other replica; write-answered to new-value-read: median {:?}, max {:?}",
        delays.len(),
        delays[delays.len() / 2],
        delays[delays.len() - 1],
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{report}");
    assert!(
        delays[delays.len() - 1] < Duration::from_millis(500),
        "{report}"
    );
}

#[tokio::test]
async fn losing_redis_falls_back_to_the_short_ttl_and_recovers() {
    let port = free_port();
    let Some(mut redis) = PrivateRedis::start(port) else {
        announce_skip(
            "the Redis outage cache test",
            "redis-server is not installed",
        );
        return;
    };
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let gw = common::start_with(SandboxOptions::default(), |c| {
        c.cache.redis_url = redis_url;
        c.cache.redis_fallback_ttl = Duration::from_secs(1);
    })
    .await;
    let admin = gw.keys.admin.clone();
    wait_for_redis(&gw.url, &admin, "connected").await;
    assert_eq!(cache_stats(&gw.url, &admin).await["ttl_secs"], 30.0);

    redis.stop();
    wait_for_redis(&gw.url, &admin, "unreachable (short TTL in force)").await;
    assert_eq!(cache_stats(&gw.url, &admin).await["ttl_secs"], 1.0);
    // Still serving, and entries live only the fallback TTL.
    let read = || gw.get("/v1/users", &admin).send();
    assert!(
        read().await.unwrap().headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("stored")
    );
    assert_eq!(
        read().await.unwrap().headers()["cache-status"],
        "contabo-gateway; hit"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = read().await.unwrap();
    assert_eq!(expired.status(), 200);
    assert!(
        expired.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("fwd=miss")
    );
    // A write while Redis is down still drops this replica's entries.
    rename_owner(&gw, &admin, "DuringOutage").await;
    let body: serde_json::Value = read().await.unwrap().json().await.unwrap();
    assert_eq!(body["data"][0]["firstName"], "DuringOutage");

    let _redis = PrivateRedis::start(port).expect("redis-server restarts");
    wait_for_redis(&gw.url, &admin, "connected").await;
    assert_eq!(cache_stats(&gw.url, &admin).await["ttl_secs"], 30.0);
}

#[tokio::test]
async fn one_publish_timeout_on_a_frozen_redis_does_not_keep_the_link_down() {
    let port = free_port();
    let Some(redis) = PrivateRedis::start(port) else {
        announce_skip(
            "the frozen Redis cache test",
            "redis-server is not installed",
        );
        return;
    };
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let gw = common::start_with(SandboxOptions::default(), |c| {
        c.cache.redis_url = redis_url;
    })
    .await;
    let admin = gw.keys.admin.clone();
    wait_for_redis(&gw.url, &admin, "connected").await;
    // Frozen: the subscription stays open, the publish of a write times out.
    redis.signal("-STOP");
    rename_owner(&gw, &admin, "WhileFrozen").await;
    assert_eq!(
        cache_stats(&gw.url, &admin).await["redis"],
        "unreachable (short TTL in force)"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.signal("-CONT");
    let resumed = Instant::now();
    // Back without another write: within a few seconds, as /ready tells.
    wait_for_redis(&gw.url, &admin, "connected").await;
    assert!(
        resumed.elapsed() < Duration::from_secs(4),
        "{:?}",
        resumed.elapsed()
    );
    let ready: serde_json::Value = http()
        .get(format!("{}/_gateway/ready", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    assert_eq!(cache_stats(&gw.url, &admin).await["ttl_secs"], 30.0);
}
