//! TLS on the API listener with real certificates made here (rcgen): HTTP/2 and HTTP/1.1 by ALPN,
//! TLS 1.2 and 1.3 only (OpenSSL's client is refused TLS 1.1), the certificate reloaded when its
//! files change (a broken file leaves the running one), and client certificates: a team identified
//! by its certificate's subject, a certificate of an unknown CA refused, key-only callers served.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestGateway, start_with};
use contabo_gateway::clients::Role;
use contabo_gateway::config::{ClientConfig, Config};
use contabo_gateway::sandbox::SandboxOptions;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate authority that signs server and client certificates.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
    fn server(&self) -> (String, String) {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate with subject `CN=<cn>, O=<o>`, as a reqwest identity.
    fn client(&self, cn: &str, o: &str) -> reqwest::Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, o);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes())
            .unwrap()
    }

    fn root(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap()
    }
}

/// Writes the server's certificate and key where the gateway reads them.
fn write_pair(dir: &Path, (cert, key): (String, String)) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    (cert_path, key_path)
}

/// A client trusting only `authority`, optionally with a client certificate.
fn client(authority: &Authority, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([authority.root()])
        .timeout(Duration::from_secs(5));
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

fn https(gw: &TestGateway) -> String {
    gw.url.replacen("http://", "https://", 1)
}

async fn tls_gateway(
    dir: &Path,
    server: &Authority,
    tweak: impl FnOnce(&mut Config) + Send + 'static,
) -> TestGateway {
    let (cert, key) = write_pair(dir, server.server());
    start_with(SandboxOptions::default(), move |c| {
        c.server.tls_cert_file = cert.display().to_string();
        c.server.tls_key_file = key.display().to_string();
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn the_api_port_serves_tls_with_http2_and_http11_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("test server CA");
    let gw = tls_gateway(dir.path(), &authority, |_| {}).await;

    let h2 = client(&authority, None)
        .get(format!("{}/v1/users", https(&gw)))
        .bearer_auth(&gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.status(), 200);
    assert_eq!(h2.version(), reqwest::Version::HTTP_2, "ALPN chose h2");

    let h1 = reqwest::Client::builder()
        .tls_certs_only([authority.root()])
        .http1_only()
        .build()
        .unwrap()
        .get(format!("{}/v1/users", https(&gw)))
        .bearer_auth(&gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(h1.status(), 200);
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);

    // Plain HTTP is not served on the TLS port.
    let plain = reqwest::Client::new()
        .get(format!("{}/v1/users", gw.url))
        .bearer_auth(&gw.keys.readonly)
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() != 200,
        "an unencrypted call is not answered"
    );

    // OpenSSL's own client: TLS 1.2 and 1.3 are accepted, TLS 1.1 is not.
    let address = gw.url.trim_start_matches("http://").to_string();
    let s_client = |args: &[&str]| {
        let mut command = std::process::Command::new("openssl");
        command
            .args(["s_client", "-connect", &address, "-servername", "localhost"])
            .args(args)
            .stdin(std::process::Stdio::null());
        command.output()
    };
    match s_client(&["-tls1_2"]) {
        Ok(tls12) => {
            let said = String::from_utf8_lossy(&tls12.stdout);
            assert!(
                said.contains("Protocol  : TLSv1.2") && !said.contains("Cipher is (NONE)"),
                "TLS 1.2 handshake:\n{said}"
            );
            let tls11 = s_client(&["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]).unwrap();
            let said = String::from_utf8_lossy(&tls11.stdout).to_string()
                + &String::from_utf8_lossy(&tls11.stderr);
            // The server answers the TLS 1.1 hello with an alert: no cipher, no session.
            assert!(
                said.contains("Cipher is (NONE)") && said.contains("alert"),
                "TLS 1.1 was accepted:\n{said}"
            );
        }
        Err(why) => common::announce_skip("the OpenSSL protocol-version check", &why.to_string()),
    }
}

#[tokio::test]
async fn a_changed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::new("first CA");
    let gw = tls_gateway(dir.path(), &first, |_| {}).await;
    let second = Authority::new("second CA");
    let call = |authority: &Authority| {
        client(authority, None)
            .get(format!("{}/v1/users", https(&gw)))
            .bearer_auth(&gw.keys.readonly)
            .send()
    };
    assert_eq!(call(&first).await.unwrap().status(), 200);
    assert!(call(&second).await.is_err(), "not trusted yet");

    // A renewed certificate (cert-manager, certbot) lands in the same files.
    write_pair(dir.path(), second.server());
    let started = Instant::now();
    loop {
        if let Ok(response) = call(&second).await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "new certificate served {:?} after the files changed",
        started.elapsed()
    );
    assert!(call(&first).await.is_err(), "the old certificate is gone");

    // A half-written or wrong file is refused; the running certificate stays.
    std::fs::write(dir.path().join("server.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(call(&second).await.unwrap().status(), 200);
}

fn certificate_team(name: &str, subject: &str, role: Role) -> ClientConfig {
    ClientConfig {
        name: name.into(),
        key_sha256: String::new(),
        role,
        per_second: 100.0,
        burst: 100,
        reveal: vec![],
        cert_subject: Some(subject.into()),
    }
}

#[tokio::test]
async fn a_team_is_identified_by_its_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = Authority::new("server CA");
    let teams = Authority::new("teams CA");
    let ca_path = dir.path().join("teams-ca.pem");
    std::fs::write(&ca_path, &teams.pem).unwrap();
    let gw = tls_gateway(dir.path(), &server, move |c| {
        c.server.tls_client_ca_file = ca_path.display().to_string();
        c.clients.push(certificate_team(
            "team-cert",
            "O=Example, CN=team-cert",
            Role::Readonly,
        ));
    })
    .await;
    let url = format!("{}/v1/compute/instances", https(&gw));

    // The certificate alone identifies the team, with its role.
    let by_certificate = client(&server, Some(teams.client("team-cert", "Example")));
    assert_eq!(by_certificate.get(&url).send().await.unwrap().status(), 200);
    let write = by_certificate
        .post(&url)
        .json(&serde_json::json!({"period": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403, "readonly, as the team is");
    let body: serde_json::Value = write.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("readonly"),
        "{body}"
    );

    // A valid certificate whose subject is no team's, without a key: 401 saying so.
    let stranger = client(&server, Some(teams.client("someone-else", "Example")));
    let refused = stranger.get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("cert_subject"),
        "{body}"
    );
    // ... but a key still works over it.
    let with_key = stranger
        .get(&url)
        .bearer_auth(&gw.keys.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);

    // A certificate from a CA the gateway does not trust ends the handshake.
    let rogue = Authority::new("rogue CA");
    let forged = client(&server, Some(rogue.client("team-cert", "Example")));
    assert!(forged.get(&url).send().await.is_err());

    // Callers without a certificate present keys as before.
    let key_only = client(&server, None)
        .get(&url)
        .bearer_auth(&gw.keys.readonly)
        .send()
        .await
        .unwrap();
    assert_eq!(key_only.status(), 200);
}

#[test]
fn tls_settings_that_do_not_go_together_are_problems() {
    let mut config = Config::default();
    config.server.tls_cert_file = "/etc/gateway/tls.crt".into();
    let problems = config.problems().join("\n");
    assert!(problems.contains("tls_key_file go together"), "{problems}");

    let mut config = Config::default();
    config.server.tls_client_ca_file = "/etc/gateway/ca.pem".into();
    let problems = config.problems().join("\n");
    assert!(problems.contains("tls_client_ca_file needs"), "{problems}");

    let mut config = Config::default();
    config
        .clients
        .push(certificate_team("t", "CN=t", Role::Readonly));
    let problems = config.problems().join("\n");
    assert!(
        problems.contains("cert_subject needs server.tls_client_ca_file"),
        "{problems}"
    );
}

#[test]
fn check_config_reads_the_tls_files_and_names_a_mismatched_pair() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("CA");
    let (cert, _) = authority.server();
    let (_, other_key) = authority.server();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), other_key).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntls_cert_file = \"{0}/tls.crt\"\ntls_key_file = \"{0}/tls.key\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_contabo-gateway"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tls.crt") && stderr.contains("do not make a pair"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_a_running_process() {
    let sandbox = contabo_gateway::sandbox::Sandbox::start(SandboxOptions::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::new("first CA");
    let (cert, key) = write_pair(dir.path(), first.server());
    let (team_key, team) = common::admin_client_block("tls-team");
    let config = format!(
        "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\n{team}",
        cert.display(),
        key.display()
    );
    let mut process = common::spawn_gateway_process(&sandbox, &config, dir.path(), None);
    assert!(process.url.starts_with("https://"), "{}", process.url);
    let call = |authority: &Authority| {
        client(authority, None)
            .get(format!("{}/v1/users", process.url))
            .bearer_auth(&team_key)
            .send()
    };
    assert_eq!(call(&first).await.unwrap().status(), 200);

    let second = Authority::new("second CA");
    write_pair(dir.path(), second.server());
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let started = Instant::now();
    while !process.log().contains("TLS certificate and key reloaded") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no reload logged:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(call(&second).await.unwrap().status(), 200);
    assert!(call(&first).await.is_err());
    assert!(process.signal_and_wait("-TERM").success());
}
