//! The deployment files under deploy/ (no Docker engine here, so: what can be checked is checked).
//! The config they carry is valid; Dockerfile, compose file and Kubernetes manifests parse and name
//! the paths, ports and environment variables the code uses; the systemd unit passes
//! `systemd-analyze verify`; the probe paths answer; and the binary starts with the compose file's
//! configuration against the real PostgreSQL and Redis.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{announce_skip, http, json, spawn_gateway_process_with_env, test_redis_url};
use contabo_gateway::config::{CREDENTIAL_VARS, Config, ValidConfig};
use contabo_gateway::sandbox::{Sandbox, SandboxOptions};
use serde_yaml::Value;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn deploy_config() -> Config {
    Config::from_file(&deploy("config/gateway.toml")).unwrap()
}

/// Every environment variable the gateway reads, as the code spells it.
fn known_env_names() -> Vec<&'static str> {
    let names = vec![
        "GATEWAY_CONFIG",
        "GATEWAY_LISTEN",
        "GATEWAY_ADMIN_LISTEN",
        "GATEWAY_CLIENTS_FILE",
        "GATEWAY_REDIS_URL",
        "GATEWAY_DATABASE_URL",
        "CONTABO_API_URL",
        "CONTABO_AUTH_URL",
    ];
    let sources = ["src/config.rs"]
        .map(|f| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap());
    for name in &names {
        assert!(
            sources.iter().any(|s| s.contains(&format!("\"{name}\""))),
            "{name} is not read by the code any more"
        );
    }
    names.into_iter().chain(CREDENTIAL_VARS).collect()
}

fn listen_port(config: &Config) -> u16 {
    valid(config).listen().port()
}

fn admin_port(config: &Config) -> u16 {
    valid(config)
        .admin_listen()
        .expect("the deploy config has an admin port")
        .port()
}

/// The deploy file's configuration as the gateway would start with it.
fn valid(config: &Config) -> ValidConfig {
    config
        .clone()
        .validated("the deploy config")
        .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn the_deploy_config_is_valid_with_and_without_the_service_urls() {
    let mut config = deploy_config();
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    assert_eq!(listen_port(&config), 8080);
    assert!(
        config
            .audit
            .database_url
            .starts_with("sqlite:///var/lib/contabo-gateway/")
    );
    config.apply_env(|name| match name {
        "GATEWAY_DATABASE_URL" => Some("postgres://gateway:pw@postgres:5432/gateway".into()),
        "GATEWAY_REDIS_URL" => Some("redis://redis:6379".into()),
        _ => None,
    });
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    assert_eq!(config.rate_limit.redis_url, "redis://redis:6379");
    assert_eq!(config.cache.redis_url, "redis://redis:6379");
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_with_a_health_check() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<(String, String)> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(' ').unwrap_or((l, ""));
            (op.to_ascii_uppercase(), rest.trim().to_string())
        })
        .collect();
    let of = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.as_str())
            .collect()
    };
    assert!(of("FROM").len() >= 2, "multi-stage");
    assert!(of("FROM")[0].contains(" AS build"));
    let user = of("USER").last().copied().expect("a USER instruction");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "runs as {user}"
    );
    let healthcheck = of("HEALTHCHECK").join(" ");
    assert!(
        healthcheck.contains("\"health\"")
            && healthcheck.contains(&format!(
                "http://127.0.0.1:{}/_gateway/health",
                admin_port(&deploy_config())
            )),
        "{healthcheck}"
    );
    let config = deploy_config();
    assert_eq!(
        of("EXPOSE"),
        [format!("{} {}", listen_port(&config), admin_port(&config)).as_str()]
    );
    // Every source the image copies from the build context exists.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for copy in of("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                root.join(source).exists(),
                "COPY {source}: not in the repository"
            );
        }
    }
    let config_target = of("COPY")
        .iter()
        .find(|c| c.starts_with("deploy/config/gateway.toml"))
        .map(|c| c.split_whitespace().last().unwrap().to_string())
        .expect("the image carries the deploy config");
    assert!(
        of("ENV")
            .iter()
            .any(|e| *e == format!("GATEWAY_CONFIG={config_target}"))
    );
    assert!(
        of("ENTRYPOINT")[0].contains("/usr/local/bin/contabo-gateway")
            && of("COPY")
                .iter()
                .any(|c| c.ends_with(" /usr/local/bin/contabo-gateway"))
    );
}

#[tokio::test]
async fn the_health_probe_command_exits_by_the_answer() {
    let gw = common::start().await;
    let probe = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_contabo-gateway"))
            .args(["health", "--url", &url])
            .output()
            .unwrap()
    };
    let ok = tokio::task::spawn_blocking({
        let url = format!("{}/_gateway/health", gw.url);
        move || probe(url)
    })
    .await
    .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let missing = tokio::task::spawn_blocking({
        let url = format!("{}/_gateway/nothing", gw.url);
        move || probe(url)
    })
    .await
    .unwrap();
    assert!(!missing.status.success());
    let closed = probe(format!(
        "http://127.0.0.1:{}/_gateway/health",
        common::free_port()
    ));
    assert!(!closed.status.success());
}

fn yaml_env(env: &Value) -> BTreeMap<String, String> {
    match env {
        Value::Mapping(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                };
                (k.as_str().unwrap().to_string(), v)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let name = item["name"].as_str().unwrap().to_string();
                (name, item["value"].as_str().unwrap_or("").to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn compose() -> Value {
    let mut value: Value = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    value.apply_merge().unwrap();
    value
}

fn compose_gateways(compose: &Value) -> Vec<(String, Value)> {
    compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .filter(|(name, _)| name.starts_with("gateway"))
        .collect()
}

#[test]
fn the_compose_file_runs_replicas_on_postgres_and_redis() {
    let compose = compose();
    let config = deploy_config();
    let header = read("docker-compose.yml");
    assert!(
        header.contains("kill -s HUP gateway-1 gateway-2"),
        "the reload is documented"
    );
    let gateways = compose_gateways(&compose);
    assert_eq!(
        gateways.len() as u32,
        config.rate_limit.replicas,
        "rate_limit.replicas matches the replicas"
    );
    let postgres = &compose["services"]["postgres"]["environment"];
    let known = known_env_names();
    for (name, service) in &gateways {
        let env = yaml_env(&service["environment"]);
        for var in env.keys() {
            assert!(
                known.contains(&var.as_str()),
                "{name}: {var} is not read by the gateway"
            );
        }
        for var in CREDENTIAL_VARS {
            assert!(env.contains_key(var), "{name}: {var} missing");
        }
        let database = env["GATEWAY_DATABASE_URL"].clone();
        let expected = format!(
            "postgres://{user}:{user}@postgres:5432/{db}",
            user = postgres["POSTGRES_USER"].as_str().unwrap(),
            db = postgres["POSTGRES_DB"].as_str().unwrap()
        );
        assert_eq!(
            database, expected,
            "{name}: the audit log goes to the compose PostgreSQL"
        );
        assert_eq!(env["GATEWAY_REDIS_URL"], "redis://redis:6379");
        let volume = service["volumes"][0].as_str().unwrap();
        let (source, rest) = volume.split_once(':').unwrap();
        let target = rest.trim_end_matches(":ro");
        assert_eq!(
            deploy(source.trim_start_matches("./")),
            deploy("config/gateway.toml")
        );
        assert_eq!(env["GATEWAY_CONFIG"], target);
        // The teams file comes from the host, and the start fails while it is missing.
        let teams = &service["volumes"][1];
        assert_eq!(teams["type"], "bind");
        assert_eq!(teams["bind"]["create_host_path"], false);
        assert_eq!(teams["read_only"], true);
        assert_eq!(
            teams["target"].as_str().unwrap(),
            env["GATEWAY_CLIENTS_FILE"]
        );
        let example = deploy("config/clients.example.toml");
        assert_eq!(
            deploy(teams["source"].as_str().unwrap().trim_start_matches("./")),
            example.with_file_name("clients.toml"),
        );
        assert!(example.exists(), "the example the compose header names");
        let ignored =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".gitignore"))
                .unwrap();
        assert!(ignored.lines().any(|l| l == "/deploy/config/clients.toml"));
        // Only the API port is published; the admin port stays on the compose network.
        let ports = service["ports"].as_sequence().unwrap();
        assert_eq!(ports.len(), 1, "{name}: {ports:?}");
        let port = ports[0].as_str().unwrap();
        assert!(
            port.ends_with(&format!(":{}", listen_port(&config))),
            "{port}"
        );
        assert_eq!(
            service["expose"][0].as_str().unwrap(),
            admin_port(&config).to_string()
        );
        let depends = service["depends_on"].as_mapping().unwrap();
        assert!(depends.contains_key("postgres") && depends.contains_key("redis"));
    }
    assert!(
        compose["services"]["redis"]["image"]
            .as_str()
            .unwrap()
            .starts_with("redis")
    );
}

fn k8s_documents() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read("k8s/gateway.yaml"))
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

use serde::Deserialize;

fn k8s(kind: &str) -> Value {
    k8s_documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s/gateway.yaml"))
}

#[tokio::test]
async fn the_kubernetes_manifests_match_the_code() {
    let config = deploy_config();
    let config_map = k8s("ConfigMap");
    assert_eq!(
        config_map["data"]["config.toml"].as_str().unwrap(),
        read("config/gateway.toml"),
        "the ConfigMap carries deploy/config/gateway.toml unchanged"
    );
    let secret = k8s("Secret");
    for var in CREDENTIAL_VARS {
        assert!(
            secret["stringData"].get(var).is_some(),
            "the Secret lacks {var}"
        );
    }
    let deployment = k8s("Deployment");
    assert_eq!(
        deployment["spec"]["replicas"].as_u64().unwrap(),
        u64::from(config.rate_limit.replicas)
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    assert!(pause >= 3, "endpoints need a few seconds to drop the pod");
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap()
            > pause + config.server.shutdown_timeout.as_secs(),
        "Kubernetes waits longer than the pause and the drain"
    );
    let port = &container["ports"][0];
    assert_eq!(
        port["containerPort"].as_u64().unwrap(),
        u64::from(listen_port(&config))
    );
    let admin = &container["ports"][1];
    assert_eq!(
        admin["containerPort"].as_u64().unwrap(),
        u64::from(admin_port(&config))
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str().unwrap(),
        admin_port(&config).to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/_gateway/metrics");
    let known = known_env_names();
    let env = yaml_env(&container["env"]);
    for var in env.keys().chain(
        secret["stringData"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(
            known.contains(&var.as_str()),
            "{var} is not read by the gateway"
        );
    }
    assert_eq!(
        container["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    assert_eq!(
        format!("{}/config.toml", mount["mountPath"].as_str().unwrap()),
        env["GATEWAY_CONFIG"]
    );
    // The teams: a Secret's clients.toml, named by GATEWAY_CLIENTS_FILE.
    let teams_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "teams")
        .expect("the teams Secret is mounted");
    assert_eq!(
        format!(
            "{}/clients.toml",
            teams_mount["mountPath"].as_str().unwrap()
        ),
        env["GATEWAY_CLIENTS_FILE"]
    );
    let teams_volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "teams")
        .unwrap();
    let teams_secret = k8s_documents()
        .into_iter()
        .find(|d| {
            d["kind"] == "Secret" && d["metadata"]["name"] == teams_volume["secret"]["secretName"]
        })
        .expect("the teams Secret is defined");
    let teams_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        teams_dir.path().join("clients.toml"),
        teams_secret["stringData"]["clients.toml"].as_str().unwrap(),
    )
    .unwrap();
    let mut with_teams = Config {
        clients_file: "clients.toml".into(),
        ..Config::default()
    };
    with_teams
        .read_clients_file(Some(teams_dir.path()))
        .expect("the teams Secret's template is a valid teams file");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let liveness = &container["livenessProbe"]["httpGet"];
    let readiness = &container["readinessProbe"]["httpGet"];
    assert_eq!(liveness["port"], admin["name"]);
    assert_eq!(readiness["port"], admin["name"]);
    let service = k8s("Service");
    let service_ports = service["spec"]["ports"].as_sequence().unwrap();
    assert_eq!(service_ports.len(), 1, "the Service exposes the API only");
    assert_eq!(service_ports[0]["targetPort"], port["name"]);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&k8s("Service")["spec"]["selector"], labels);
    let pdb = k8s("PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));

    // The probe paths answer 200 on a running gateway's admin port.
    let gw = common::start_with(SandboxOptions::default(), |c| {
        c.server.admin_listen = "127.0.0.1:0".into();
    })
    .await;
    for probe in [liveness, readiness] {
        let path = probe["path"].as_str().unwrap();
        let response = http()
            .get(format!("{}{path}", gw.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = read("systemd/contabo-gateway.service");
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if let Some((key, value)) = line.split_once('=')
            && !line.starts_with('#')
        {
            values
                .entry(key.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    let one = |key: &str| {
        values
            .get(key)
            .and_then(|v| v.first())
            .cloned()
            .unwrap_or_default()
    };
    assert!(one("ExecStart").contains(" serve --config /etc/contabo-gateway/config.toml"));
    assert!(
        one("ExecReload").contains("-HUP $MAINPID"),
        "reload is SIGHUP"
    );
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    assert!(stop > deploy_config().server.shutdown_timeout.as_secs());
    assert!(one("EnvironmentFile").starts_with("/etc/contabo-gateway/"));
    for (key, expected) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(one(key), expected, "{key}");
    }
    assert_eq!(
        one("WorkingDirectory"),
        format!("/var/lib/{}", one("StateDirectory")),
        "the SQLite file of the deploy config lives in the state directory"
    );

    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        announce_skip(
            "systemd-analyze verify of the unit",
            "systemd-analyze is not installed",
        );
        return;
    }
    // verify needs the binary to exist: point the unit at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contabo-gateway.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/contabo-gateway",
            env!("CARGO_BIN_EXE_contabo-gateway"),
        ),
    )
    .unwrap();
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verified.stderr).to_string()
        + &String::from_utf8_lossy(&verified.stdout);
    let about_this_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("contabo-gateway.service"))
        .collect();
    assert!(verified.status.success(), "{said}");
    assert!(about_this_unit.is_empty(), "{about_this_unit:?}");
}

#[tokio::test]
async fn the_binary_starts_with_the_compose_configuration_on_postgres_and_redis() {
    let (Some(redis_url), Some(database_url)) =
        (test_redis_url(), common::fresh_postgres_url().await)
    else {
        announce_skip(
            "the compose-configuration start on PostgreSQL and Redis",
            "GATEWAY_TEST_POSTGRES_URL or GATEWAY_TEST_REDIS_URL is not set",
        );
        return;
    };
    let compose = compose();
    let (_, service) = compose_gateways(&compose).remove(0);
    let compose_env = yaml_env(&service["environment"]);
    let dir = tempfile::tempdir().unwrap();
    // The teams file the compose file mounts from the host, made from the example.
    let (key, team) = common::admin_client_block("deploy-check");
    let teams = dir.path().join("clients.toml");
    std::fs::write(
        &teams,
        format!("{}\n{team}", read("config/clients.example.toml")),
    )
    .unwrap();
    let teams = teams.to_str().unwrap().to_string();
    // The compose file's environment, with its service hosts replaced by this machine's services.
    let mut env: Vec<(&str, &str)> = compose_env
        .iter()
        .filter(|(k, _)| !CREDENTIAL_VARS.contains(&k.as_str()) && k.as_str() != "GATEWAY_CONFIG")
        .map(|(k, _)| match k.as_str() {
            "GATEWAY_REDIS_URL" => ("GATEWAY_REDIS_URL", redis_url.as_str()),
            "GATEWAY_DATABASE_URL" => ("GATEWAY_DATABASE_URL", database_url.as_str()),
            "GATEWAY_CLIENTS_FILE" => ("GATEWAY_CLIENTS_FILE", teams.as_str()),
            other => panic!("a compose variable this test does not map: {other}"),
        })
        .collect();
    // The admin port of the config, on a free loopback port here.
    env.push(("GATEWAY_ADMIN_LISTEN", "127.0.0.1:0"));
    let sandbox = Sandbox::start(SandboxOptions::default()).await.unwrap();
    let process = spawn_gateway_process_with_env(
        &sandbox,
        &read("config/gateway.toml"),
        dir.path(),
        Some(&database_url),
        &env,
    );
    let admin_url = process
        .admin_url
        .clone()
        .expect("the deploy config serves an admin port");

    let mut ready = serde_json::Value::Null;
    for _ in 0..100 {
        let response = http()
            .get(format!("{admin_url}/_gateway/ready"))
            .send()
            .await
            .unwrap();
        let ok = response.status() == 200;
        ready = json(response).await;
        if ok && ready["checks"]["rate_limit_redis"] == "ok" && ready["checks"]["redis"] == "ok" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["checks"]["audit"], "ok");
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
    assert_eq!(ready["checks"]["rate_limit_redis"], "ok", "{ready}");
    let created = http()
        .post(format!("{}/v1/compute/instances", process.url))
        .bearer_auth(&key)
        .json(&serde_json::json!({"imageId": "afecbb85-e2fc-46f0-9684-b46b1faf00bb", "productId": "V45"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let records = http()
        .get(format!("{admin_url}/_gateway/audit?client=deploy-check"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let records = json(records).await;
    assert_eq!(records["records"][0]["outcome"], "forwarded", "{records}");
    let log = process.log();
    assert!(
        log.lines().any(|l| l.starts_with('{')),
        "the deploy config logs JSON:\n{log}"
    );
    // The published port serves no metrics.
    let metrics = http()
        .get(format!("{}/_gateway/metrics", process.url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 404);
}

#[test]
fn the_ingress_example_routes_the_api_to_the_service_and_its_proxies_are_trusted() {
    let ingress: Value = serde_yaml::from_str(&read("k8s/ingress.yaml")).unwrap();
    assert_eq!(ingress["kind"], "Ingress");
    let service = k8s("Service");
    let paths = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_sequence()
        .unwrap();
    let routed: Vec<&str> = paths.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(
        routed,
        ["/v1", contabo_gateway::token_endpoint::TOKEN_PATH],
        "the API and the token endpoint, nothing of /_gateway"
    );
    for path in paths {
        let backend = &path["backend"]["service"];
        assert_eq!(backend["name"], service["metadata"]["name"]);
        assert_eq!(backend["port"]["name"], service["spec"]["ports"][0]["name"]);
    }
    // The config the ingress's pods run with trusts the controller's network, not everyone.
    let config = deploy_config();
    assert!(!config.server.trusted_proxies.is_empty());
    for proxy in &config.server.trusted_proxies {
        assert!(!proxy.ends_with("/0"), "{proxy} trusts every peer");
    }
}

#[test]
fn the_systemd_config_is_a_single_local_instance() {
    let config = Config::from_file(&deploy("systemd/gateway.toml")).unwrap();
    let valid = valid(&config);
    assert!(valid.listen().ip().is_loopback());
    assert!(valid.admin_listen().unwrap().ip().is_loopback());
    assert_eq!(config.rate_limit.replicas, 1);
    assert!(config.rate_limit.redis_url.is_empty() && config.cache.redis_url.is_empty());
    assert!(
        config
            .audit
            .database_url
            .starts_with("sqlite:///var/lib/contabo-gateway/"),
        "in the unit's StateDirectory"
    );
    let unit = read("systemd/contabo-gateway.service");
    assert!(unit.contains("deploy/systemd/gateway.toml /etc/contabo-gateway/config.toml"));
    assert!(!unit.contains("deploy/config/gateway.toml"));
}

/// Metric names the gateway exports, as src/metrics.rs spells them.
fn exported_metrics() -> Vec<String> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
            .unwrap();
    source
        .split('"')
        .filter(|s| {
            s.starts_with("gateway_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect()
}

/// Every metric name a PromQL expression uses is one the gateway exports (or Prometheus' `up`).
fn assert_known_metrics(expr: &str, exported: &[String]) {
    let mut found = 0;
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("gateway_") {
            continue;
        }
        found += 1;
        let base = word.trim_end_matches("_bucket");
        assert!(
            exported.iter().any(|m| m == base),
            "{word} (in {expr}) is not a metric the gateway exports"
        );
        if word.ends_with("_bucket") {
            assert!(
                base.ends_with("_seconds"),
                "{word}: only *_seconds have buckets"
            );
        }
    }
    assert!(
        found > 0 || expr.contains("up{"),
        "{expr} uses no gateway metric"
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_use_exported_metrics() {
    let rules: Value = serde_yaml::from_str(&read("prometheus/alerts.yml")).unwrap();
    let exported = exported_metrics();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            assert_known_metrics(rule["expr"].as_str().unwrap(), &exported);
            assert!(rule["annotations"]["summary"].is_string());
            alerts += 1;
        }
    }
    assert!(alerts >= 5);
    let checked = match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml"))
        .output()
    {
        Ok(output) => output,
        Err(why) => {
            announce_skip("promtool check rules", &format!("promtool: {why}"));
            return;
        }
    };
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn the_grafana_dashboard_charts_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/contabo-gateway.json")).unwrap();
    assert_eq!(dashboard["uid"], "contabo-gateway");
    let exported = exported_metrics();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut charted = std::collections::BTreeSet::new();
    for panel in panels {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert_known_metrics(expr, &exported);
            charted.extend(
                exported
                    .iter()
                    .filter(|m| expr.contains(m.as_str()))
                    .cloned(),
            );
        }
    }
    for needed in [
        "gateway_calls_total",
        "gateway_rate_limited_total",
        "gateway_audit_store_up",
        "gateway_token_remaining_seconds",
        "gateway_upstream_queue_depth",
    ] {
        assert!(charted.contains(needed), "{needed} is not charted");
    }
}
