#!/usr/bin/env python3
"""Benchmarks the gateway against nginx on the same upstream, on loopback, in one run.

    python3 bench/run.py [--rounds 3] [--seconds 5] [--connections 64] [--rate 2000]

- Upstream: an nginx answering like Contabo with `return` (token endpoint, GET /v1/users/{id},
  GET and POST /v1/compute/instances), one worker, so it is the same for both contenders.
- Reference: nginx (Debian package) as a reverse proxy to that upstream with keepalive,
  proxy_set_header for the bearer token, and proxy_cache + proxy_cache_lock for /v1/users/.
- Gateway: the release build, same upstream, the cache on, logs at warn (nginx's access log is off).
- Load: wrk, alternating gateway and nginx in every round. Scenarios: GET passthrough (uncached
  route), cache hit, POST passthrough (1 KiB JSON), and fixed-rate latency runs (direct to upstream,
  gateway, nginx, rotating, every round) for p50/p99/p999 and the latency each proxy adds.
- Gateway-only rows: audited POST (SQLite, PostgreSQL at BENCH_POSTGRES_URL) against the un-audited
  gateway, and GET passthrough with rate limits local / in Redis (BENCH_REDIS_URL) / off.
- Floor: GET passthrough also through bench/floor, a proxy made of hyper and tokio alone (no gateway
  stages), in the same rounds: what the frameworks cost against nginx, and what the gateway's own
  work costs against them.
- Output: a markdown table on stdout and in bench/results/latest.md, with the gateway's peak RSS.
Loopback only; installs nginx and wrk from Debian's packages when missing.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

USER_JSON = (
    '{"data":[{"tenantId":"DE","customerId":"54321","userId":"6cdf5968-f9fe-4192-97c2-f349e813c5e8",'
    '"firstName":"Bench","lastName":"User","email":"bench@example.com","emailVerified":true,'
    '"enabled":true,"totp":false,"locale":"en","roles":[],"owner":false}],'
    '"_links":{"self":"/v1/users/6cdf5968-f9fe-4192-97c2-f349e813c5e8"}}'
)
INSTANCES_JSON = (
    '{"_pagination":{"size":10,"totalElements":1,"totalPages":1,"page":1},"data":[{"tenantId":"DE",'
    '"customerId":"54321","instanceId":100001,"name":"vmi100001","displayName":"bench","status":"running",'
    '"region":"EU","productId":"V45","imageId":"afecbb85-e2fc-46f0-9684-b46b1faf00bb"}],'
    '"_links":{"self":"/v1/compute/instances?page=1","first":"/v1/compute/instances?page=1",'
    '"last":"/v1/compute/instances?page=1"}}'
)
CREATED_JSON = (
    '{"data":[{"tenantId":"DE","customerId":"54321","instanceId":100002,"status":"provisioning"}],'
    '"_links":{"self":"/v1/compute/instances/100002"}}'
)
TOKEN_JSON = (
    '{"access_token":"bench-token","expires_in":300,"refresh_token":"bench-refresh",'
    '"refresh_expires_in":1800,"token_type":"Bearer"}'
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_tools():
    missing = [pkg for tool, pkg in (("nginx", "nginx"), ("wrk", "wrk")) if not shutil.which(tool)]
    if missing:
        print(f"installing {' '.join(missing)} from Debian's packages", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def wait_for(url, headers=None, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def upstream_conf(work, port):
    return f"""
worker_processes 1;
daemon off;
pid {work}/upstream.pid;
error_log {work}/upstream-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_buffer_size 64k;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /auth/token {{ return 200 '{TOKEN_JSON}'; }}
        location /v1/users/ {{ return 200 '{USER_JSON}'; }}
        location = /v1/compute/instances {{
            if ($request_method = POST) {{ return 201 '{CREATED_JSON}'; }}
            return 200 '{INSTANCES_JSON}';
        }}
        location / {{ return 404 '{{"statusCode":404,"message":"Not Found"}}'; }}
    }}
}}
"""


def nginx_proxy_conf(work, port, upstream_port):
    proxy = """
            proxy_pass http://contabo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer bench-token";
            proxy_set_header x-api-key "";"""
    return f"""
worker_processes auto;
daemon off;
pid {work}/proxy.pid;
error_log {work}/proxy-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_max_body_size 10m;
    client_body_buffer_size 64k;
    proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=users:10m max_size=64m inactive=60s use_temp_path=off;
    upstream contabo {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{{proxy}
        }}
        location /v1/users/ {{{proxy}
            proxy_cache users;
            proxy_cache_lock on;
            proxy_cache_valid 200 30s;
            proxy_cache_key $uri$is_args$args;
            add_header cache-status $upstream_cache_status;
        }}
    }}
}}
"""


def gateway_conf(port, upstream_port, key_digest, audit_url=None, limits="local", redis_url=""):
    """limits: "off", "local" or "redis"; when on, every limit is far above the load."""
    audit = f'enabled = true\ndatabase_url = "{audit_url}"' if audit_url else "enabled = false"
    rate_limit = "enabled = false" if limits == "off" else "enabled = true"
    rate_limit += "\nupstream_per_second = 10000000\nupstream_burst = 10000000"
    if limits == "redis":
        rate_limit += f'\nredis_url = "{redis_url}"\nredis_key_prefix = "bench-{secrets.token_hex(6)}"'
    return f"""
[audit]
{audit}
[rate_limit]
{rate_limit}
[server]
listen = "127.0.0.1:{port}"
[upstream]
api_url = "http://127.0.0.1:{upstream_port}"
auth_url = "http://127.0.0.1:{upstream_port}/auth/token"
[log]
level = "warn"
[cache]
ttl_secs = 30
[[clients]]
name = "bench"
key_sha256 = "{key_digest}"
role = "admin"
per_second = 1000000
burst = 1000000
"""


def redis_url():
    """The Redis at BENCH_REDIS_URL (default: the local one), if it answers PING."""
    url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
    host, _, port = url.split("//", 1)[1].rsplit("/", 1)[0].partition(":")
    try:
        with socket.create_connection((host, int(port or 6379)), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return url if s.recv(16).startswith(b"+PONG") else None
    except OSError:
        return None


def postgres_schema_url():
    """A fresh schema in the PostgreSQL at BENCH_POSTGRES_URL (default: the local test database)."""
    url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
    schema = f"bench_{secrets.token_hex(6)}"
    if not shutil.which("psql"):
        return None
    created = subprocess.run(["psql", url, "-q", "-c", f"CREATE SCHEMA {schema}"], capture_output=True)
    if created.returncode != 0:
        return None
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-c%20search_path%3D{schema}"


def start(cmd, env=None, log=None):
    return subprocess.Popen(cmd, env=env, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wrk(url, key, method="GET", body_bytes=0, rate=0, seconds=5, connections=64):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
           "-s", os.path.join(BENCH, "wrk.lua")]
    if key:
        cmd += ["-H", f"Authorization: Bearer {key}"]
    cmd += [url, "--", method, str(body_bytes), str(rate), str(connections)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"BENCH_JSON (\{.*\})", out)
    if not match:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if result["non_2xx"] or result["socket_errors"]:
        raise SystemExit(f"errors during the run against {url}: {result}")
    return result


def ms(us):
    return f"{us / 1000:.2f}"


def run_limits(limiter_urls, key, args):
    """GET passthrough through gateways with rate limits off, local and in Redis, alternating."""
    results = {kind: [] for kind in limiter_urls}
    for round_no in range(args.rounds):
        kinds = list(limiter_urls) if round_no % 2 == 0 else list(reversed(limiter_urls))
        for kind in kinds:
            r = wrk(limiter_urls[kind] + "/v1/compute/instances", key, seconds=args.seconds,
                    connections=args.connections)
            results[kind].append(r)
            print(f"round {round_no + 1} rate limits {kind:8} {r['rps']:>10.0f} req/s  "
                  f"p50 {ms(r['p50_us'])} ms  p99 {ms(r['p99_us'])} ms", flush=True)
    return results


def limits_table(limit_results):
    lines = ["Rate limiting (GET passthrough; team limit and upstream budget on but far above the load) "
             "against the same gateway with limits off:", "",
             "| limits | req/s | vs off | p50 / p99 ms |", "|---|---:|---:|---:|"]
    off_rps = statistics.median(x["rps"] for x in limit_results["off"])
    for kind, label in (("off", "off"), ("local", "local (governor)"), ("redis", "Redis (shared GCRA)")):
        if kind not in limit_results:
            lines.append(f"| {label} | not run: no Redis at BENCH_REDIS_URL | | |")
            continue
        rs = limit_results[kind]
        rps = statistics.median(x["rps"] for x in rs)
        p50, p99 = (statistics.median(x[k] for x in rs) for k in ("p50_us", "p99_us"))
        lines.append(f"| {label} | {rps:,.0f} | {rps / off_rps:.2f} | {ms(p50)} / {ms(p99)} |")
    lines.append("")
    return lines


LATENCY_CONNECTIONS = 16


def run_latency(targets, args):
    """Fixed-rate runs, every round direct to upstream, gateway and nginx in a rotating order; each
    proxy's added p99 is taken against the direct run of the same round (the machine's state drifts
    between rounds more than within one)."""
    results = {who: [] for who in targets}
    names = list(targets)
    for round_no in range(args.rounds):
        shift = round_no % len(names)
        for who in names[shift:] + names[:shift]:
            base, k = targets[who]
            r = wrk(base + "/v1/compute/instances", k, rate=args.rate, seconds=args.seconds,
                    connections=LATENCY_CONNECTIONS)
            results[who].append(r)
            print(f"round {round_no + 1} fixed rate {args.rate}/s {who:20} p50 {ms(r['p50_us'])} ms  "
                  f"p99 {ms(r['p99_us'])} ms  p999 {ms(r['p999_us'])} ms", flush=True)
    return results


def latency_table(latency, args):
    lines = [f"Latency at a fixed {args.rate} req/s (GET passthrough, {LATENCY_CONNECTIONS} connections; "
             f"{args.rounds} rounds x {args.seconds} s, rotating order; medians of the rounds; added p99 = "
             "p99 minus the same round's direct p99):", "",
             "| target | p50 ms | p99 ms | p999 ms | added p99 ms |", "|---|---:|---:|---:|---:|"]
    direct = latency["direct to upstream"]
    for who, rs in latency.items():
        p50, p99, p999 = (statistics.median(x[k] for x in rs) for k in ("p50_us", "p99_us", "p999_us"))
        added = "" if rs is direct else ms(statistics.median(
            x["p99_us"] - d["p99_us"] for x, d in zip(rs, direct)))
        lines.append(f"| {who} | {ms(p50)} | {ms(p99)} | {ms(p999)} | {added} |")
    lines.append("")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=2000, help="requests/s of the fixed-rate latency run")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--only", choices=["limits"],
                        help="run only these rows and print them (bench/results/latest.md is left alone)")
    args = parser.parse_args()

    ensure_tools()
    floor_dir = os.path.join(BENCH, "floor")
    if not args.skip_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=floor_dir, check=True)
    binary = os.path.join(ROOT, "target", "release", "contabo-gateway")
    floor_binary = os.path.join(floor_dir, "target", "release", "hyper-floor")

    work = tempfile.mkdtemp(prefix="gateway-bench-")
    # nginx workers run as an unprivileged user: they must be able to write their cache here.
    os.chmod(work, 0o755)
    os.makedirs(os.path.join(work, "nginx-cache"), mode=0o777)
    os.chmod(os.path.join(work, "nginx-cache"), 0o777)
    up_port, nginx_port, gw_port, floor_port = free_port(), free_port(), free_port(), free_port()
    key = secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    audited = {"SQLite": f"sqlite://{work}/audit.db"}
    pg = postgres_schema_url()
    if pg:
        audited["PostgreSQL"] = pg
    audited_ports = {backend: free_port() for backend in audited}
    # Gateways for the rate-limit rows: the main gateway has local limits on; these have them off,
    # and in Redis.
    limiters = {"off": free_port()}
    redis = redis_url()
    if redis:
        limiters["redis"] = free_port()
    configs = [("upstream.conf", upstream_conf(work, up_port)),
               ("proxy.conf", nginx_proxy_conf(work, nginx_port, up_port)),
               ("gateway.toml", gateway_conf(gw_port, up_port, digest))]
    configs += [(f"gateway-{b}.toml", gateway_conf(audited_ports[b], up_port, digest, url)) for b, url in audited.items()]
    configs += [(f"gateway-limits-{kind}.toml", gateway_conf(port, up_port, digest, limits=kind, redis_url=redis))
                for kind, port in limiters.items()]
    for name, text in configs:
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    env = dict(os.environ, CONTABO_CLIENT_ID="bench", CONTABO_CLIENT_SECRET="bench",
               CONTABO_API_USER="bench", CONTABO_API_PASSWORD="bench")
    for var in ("GATEWAY_LISTEN", "GATEWAY_CONFIG", "GATEWAY_REDIS_URL", "CONTABO_API_URL", "CONTABO_AUTH_URL"):
        env.pop(var, None)
    procs = []
    try:
        procs.append(start(["nginx", "-c", os.path.join(work, "upstream.conf"), "-p", work]))
        procs.append(start(["nginx", "-c", os.path.join(work, "proxy.conf"), "-p", work]))
        gateway = start([binary, "serve", "--config", os.path.join(work, "gateway.toml")], env=env,
                        log=open(os.path.join(work, "gateway.log"), "w"))
        procs.append(gateway)
        procs.append(start([floor_binary, f"127.0.0.1:{floor_port}", f"127.0.0.1:{up_port}",
                            str(os.cpu_count() or 1)]))
        for backend in audited:
            procs.append(start([binary, "serve", "--config", os.path.join(work, f"gateway-{backend}.toml")], env=env,
                               log=open(os.path.join(work, f"gateway-{backend}.log"), "w")))
        for kind in limiters:
            procs.append(start([binary, "serve", "--config", os.path.join(work, f"gateway-limits-{kind}.toml")],
                               env=env, log=open(os.path.join(work, f"gateway-limits-{kind}.log"), "w")))
        up, ng, gw, floor = (f"http://127.0.0.1:{p}" for p in (up_port, nginx_port, gw_port, floor_port))
        limiter_urls = {"local": gw} | {k: f"http://127.0.0.1:{p}" for k, p in limiters.items()}
        for url in limiter_urls.values():
            wait_for(url + "/v1/compute/instances", {"Authorization": f"Bearer {key}"})
        audited_urls = {b: f"http://127.0.0.1:{p}" for b, p in audited_ports.items()}
        for url in audited_urls.values():
            wait_for(url + "/v1/compute/instances", {"Authorization": f"Bearer {key}"})
        wait_for(up + "/v1/compute/instances")
        wait_for(ng + "/v1/compute/instances")
        wait_for(gw + "/v1/compute/instances", {"Authorization": f"Bearer {key}"})
        wait_for(floor + "/v1/compute/instances")

        if args.only == "limits":
            print("\n".join(limits_table(run_limits(limiter_urls, key, args))))
            return 0

        scenarios = [
            ("GET passthrough", "/v1/compute/instances", "GET", 0),
            ("cache hit", "/v1/users/6cdf5968-f9fe-4192-97c2-f349e813c5e8", "GET", 0),
            ("POST passthrough (1 KiB JSON)", "/v1/compute/instances", "POST", 1024),
        ]
        results = {(s[0], who): [] for s in scenarios for who in ("gateway", "nginx", "floor")}
        targets = {"gateway": (gw, key), "nginx": (ng, None), "floor": (floor, None)}
        for round_no in range(args.rounds):
            order = ("gateway", "nginx") if round_no % 2 == 0 else ("nginx", "gateway")
            for name, path, method, size in scenarios:
                # The floor runs in the GET passthrough rounds only, between the two contenders.
                contenders = (order[0], "floor", order[1]) if name == "GET passthrough" else order
                for who in contenders:
                    base, k = targets[who]
                    r = wrk(base + path, k, method, size, seconds=args.seconds, connections=args.connections)
                    results[(name, who)].append(r)
                    print(f"round {round_no + 1} {name:32} {who:8} {r['rps']:>10.0f} req/s  "
                          f"p50 {ms(r['p50_us'])} ms  p99 {ms(r['p99_us'])} ms", flush=True)

        audit_results = {b: {"audited": [], "plain": []} for b in audited_urls}
        for round_no in range(args.rounds):
            for backend, url in audited_urls.items():
                order = (("audited", url), ("plain", gw)) if round_no % 2 == 0 else (("plain", gw), ("audited", url))
                for kind, base in order:
                    r = wrk(base + "/v1/compute/instances", key, "POST", 1024, seconds=args.seconds,
                            connections=args.connections)
                    audit_results[backend][kind].append(r)
                    print(f"round {round_no + 1} audited POST ({backend}) {kind:8} {r['rps']:>10.0f} req/s  "
                          f"p50 {ms(r['p50_us'])} ms  p99 {ms(r['p99_us'])} ms", flush=True)

        limit_results = run_limits(limiter_urls, key, args)

        latency = run_latency({"direct to upstream": (up, None), "gateway": (gw, key), "nginx": (ng, None)},
                              args)
        rss_mib = peak_rss_kib(gateway.pid) / 1024
    finally:
        for proc in reversed(procs):
            stop(proc)

    lines = []
    lines.append(f"Measured {datetime.date.today().isoformat()} on {platform.node()} "
                 f"({os.cpu_count()} CPUs, {platform.machine()}, {platform.system()} {platform.release()}); "
                 f"nginx {subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip().split('/')[-1]}, "
                 f"wrk -t2 -c{args.connections}, {args.rounds} rounds x {args.seconds} s per contender, "
                 f"alternating; medians of the rounds. Gateway, nginx, the upstream nginx and wrk share the machine.")
    lines.append("")
    lines.append("| scenario | gateway req/s | nginx req/s | ratio | gateway p50 / p99 ms | nginx p50 / p99 ms |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, *_ in scenarios:
        g, n = results[(name, "gateway")], results[(name, "nginx")]
        grps, nrps = (statistics.median(x["rps"] for x in rs) for rs in (g, n))
        gp50, gp99 = (statistics.median(x[p] for x in g) for p in ("p50_us", "p99_us"))
        np50, np99 = (statistics.median(x[p] for x in n) for p in ("p50_us", "p99_us"))
        lines.append(f"| {name} | {grps:,.0f} | {nrps:,.0f} | {grps / nrps:.2f} | "
                     f"{ms(gp50)} / {ms(gp99)} | {ms(np50)} / {ms(np99)} |")
    lines.append("")
    floor_rps = statistics.median(x["rps"] for x in results[("GET passthrough", "floor")])
    get_rps = {who: statistics.median(x["rps"] for x in results[("GET passthrough", who)])
               for who in ("gateway", "nginx")}
    lines.append(f"Floor: GET passthrough through bench/floor, a proxy made of hyper and tokio alone (no "
                 f"gateway stages), in the same rounds: {floor_rps:,.0f} req/s, {floor_rps / get_rps['nginx']:.2f} "
                 f"of nginx; the gateway runs at {get_rps['gateway'] / floor_rps:.2f} of it.")
    lines.append("")
    lines.append("Audited POST (1 KiB JSON; every call commits a pending record before it is forwarded) "
                 "against the same gateway with the audit log off:")
    lines.append("")
    lines.append("| store | audited req/s | un-audited req/s | ratio | audited p50 / p99 ms |")
    lines.append("|---|---:|---:|---:|---:|")
    for backend, rs in audit_results.items():
        a, p = statistics.median(x["rps"] for x in rs["audited"]), statistics.median(x["rps"] for x in rs["plain"])
        ap50, ap99 = (statistics.median(x[k] for x in rs["audited"]) for k in ("p50_us", "p99_us"))
        lines.append(f"| {backend} | {a:,.0f} | {p:,.0f} | {a / p:.2f} | {ms(ap50)} / {ms(ap99)} |")
    if "PostgreSQL" not in audit_results:
        lines.append("| PostgreSQL | not run: no PostgreSQL at BENCH_POSTGRES_URL | | | |")
    lines.append("")
    lines += limits_table(limit_results)
    lines += latency_table(latency, args)
    lines.append(f"Gateway peak RSS during the run: {rss_mib:.1f} MiB.")
    table = "\n".join(lines)
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    with open(os.path.join(BENCH, "results", "latest.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(table)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
