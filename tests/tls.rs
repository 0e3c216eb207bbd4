//! TLS for real. PostgreSQL, as libpq does it, against the machine's server (Debian's runs
//! with ssl = on and its self-signed "snakeoil" certificate); one test, as PGSSLROOTCERT is
//! process-wide. Redis: a private `redis-server` that speaks TLS only, with a test CA made
//! here by openssl and client certificates required, reached by a deduper process and by
//! the library's own connection.

use crm_common::audit_store::AuditStore;

const BASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn encrypted(url: &str) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = AuditStore::connect(url).await?;
        let row =
            store.client().query_one("SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)", &[]).await?;
        Ok(row.get::<_, bool>(0))
    })
}

#[test]
fn sslmode_require_encrypts_and_a_root_certificate_is_checked() {
    std::env::remove_var("PGSSLROOTCERT");
    assert!(!encrypted(BASE).unwrap(), "no sslmode: plain, as local servers expect");
    assert!(encrypted(&format!("{BASE}?sslmode=require")).unwrap(), "sslmode=require: encrypted");

    // The server's own certificate as the CA: verified (libpq's verify-ca).
    std::env::set_var("PGSSLROOTCERT", "/etc/ssl/certs/ssl-cert-snakeoil.pem");
    assert!(encrypted(&format!("{BASE}?sslmode=require")).unwrap(), "verified against its CA");
    // Any other CA: refused.
    let other = crm_sync_tests::TempFile::new(
        "other-ca.pem",
        &std::fs::read_to_string("/etc/ssl/certs/ISRG_Root_X1.pem").expect("a public CA on the machine"),
    );
    std::env::set_var("PGSSLROOTCERT", other.path());
    let err = encrypted(&format!("{BASE}?sslmode=require")).unwrap_err();
    assert!(err.to_string().contains("PostgreSQL at"), "{err}");
    std::env::remove_var("PGSSLROOTCERT");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all made by openssl.
struct TestPki {
    dir: std::path::PathBuf,
}

impl TestPki {
    fn make(label: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("crm-sync-tls-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=crm-sync test CA",
        ]);
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        for who in ["server", "client"] {
            let (key, csr, pem) = (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"));
            run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &format!("/CN=crm-sync {who}")]);
            let mut args =
                vec!["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &pem, "-days", "2"];
            if who == "server" {
                args.extend(["-extfile", "server.ext"]);
            }
            run(&args);
        }
        TestPki { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server listening with TLS only (no plain port), requiring client certificates.
struct TlsRedis {
    port: u16,
    child: std::process::Child,
}

impl TlsRedis {
    fn start(pki: &TestPki) -> TlsRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &pki.file("server.pem"), "--tls-key-file", &pki.file("server.key")])
            .args(["--tls-ca-cert-file", &pki.file("ca.pem"), "--tls-auth-clients", "yes"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server with TLS on {port} did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        TlsRedis { port, child }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PING through `crm_common::redis_conn`, with the TLS variables the environment has now.
fn ping(url: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let target = crm_common::redis_conn::RedisTarget::new(url, false)?;
        let mut conn = crm_common::redis_conn::connect_lazy(&target).map_err(|e| e.to_string())?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| e.to_string())
    })
}

#[test]
fn redis_over_tls_with_a_private_ca_and_client_certificates() {
    use crm_common::codec;
    use crm_common::redis_conn::{TLS_CA_FILE_ENV, TLS_CERT_FILE_ENV, TLS_KEY_FILE_ENV};
    let pki = TestPki::make("redis");
    let redis = TlsRedis::start(&pki);
    let url = redis.url();
    let (ca, cert, key) = (pki.file("ca.pem"), pki.file("client.pem"), pki.file("client.key"));

    // The system's roots do not know the test CA: refused.
    for v in [TLS_CA_FILE_ENV, TLS_CERT_FILE_ENV, TLS_KEY_FILE_ENV] {
        std::env::remove_var(v);
    }
    assert!(ping(&url).is_err(), "a certificate from an unknown CA is refused");
    // The CA trusted, but the server wants a client certificate: refused.
    std::env::set_var(TLS_CA_FILE_ENV, &ca);
    assert!(ping(&url).is_err(), "no client certificate, no connection");
    // Half a client certificate is a configuration error, said as one.
    std::env::set_var(TLS_CERT_FILE_ENV, &cert);
    let err = ping(&url).unwrap_err();
    assert!(err.contains(TLS_KEY_FILE_ENV), "{err}");
    std::env::set_var(TLS_KEY_FILE_ENV, &key);
    assert_eq!(ping(&url).unwrap(), "PONG", "CA and client certificate: connected over TLS");
    // A CA file that is not there is an error, not a fall back to the system's roots.
    std::env::set_var(TLS_CA_FILE_ENV, pki.file("nonesuch.pem"));
    assert!(ping(&url).unwrap_err().contains("nonesuch.pem"));
    std::env::set_var(TLS_CA_FILE_ENV, &ca);
    // TLS files with a plain URL: a mistake, said as one (not a plain connection).
    assert!(ping(&url.replace("rediss://", "redis://")).unwrap_err().contains("not rediss://"));

    // A service over it: the deduper keeps its marks in the TLS-only Redis and fans out.
    let broker = crm_sync_tests::Broker::start(1);
    let tenants = crm_sync_tests::TempFile::new(
        "tenants.toml",
        "[tenants.acme]\ndefault_region = \"US\"\n[tenants.acme.crms.hubspot]\nplan = \"starter\"\ncredentials_secret = \"X\"\n",
    );
    let deduper = broker.service(
        "deduper",
        &[
            ("TENANTS_CONFIG", tenants.path()),
            ("REDIS_URL", url.as_str()),
            ("REDIS_KEY_PREFIX", "tls"),
            (TLS_CA_FILE_ENV, ca.as_str()),
            (TLS_CERT_FILE_ENV, cert.as_str()),
            (TLS_KEY_FILE_ENV, key.as_str()),
        ],
    );
    let call = crm_sync_tests::normalised_call("acme", "tls-1", 1);
    broker.produce("calls.normalised", &[("acme".into(), codec::encode(&call).unwrap(), vec![])]);
    let seen = broker.read(&["crm.writes.hubspot"], 1, std::time::Duration::from_secs(60));
    assert_eq!(seen.len(), 1, "the deduper fanned the call out with its marks in the TLS Redis");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let keys: Vec<String> = rt.block_on(async {
        let target = crm_common::redis_conn::RedisTarget::new(&url, false).unwrap();
        let mut conn = crm_common::redis_conn::connect_lazy(&target).unwrap();
        redis::cmd("KEYS").arg("tls:*").query_async(&mut conn).await.unwrap()
    });
    assert!(keys.iter().any(|k| k.contains("acme")), "the dedup mark is in the TLS-only Redis: {keys:?}");
    assert!(deduper.terminate().success());
}

/// Kafka with SASL/SCRAM-SHA-512 required, for real: tansu 0.6 with `--authentication`
/// (its users live in its SQLite file, made with `tansu user create` before authentication
/// is switched on). A normaliser process with the password from `KAFKA_SASL_PASSWORD` in
/// `CRM_SYNC_SECRETS_DIR` consumes and produces through it; one with the wrong password logs
/// the authentication failure and never the password; a client without SASL gets nothing.
#[test]
fn kafka_with_sasl_scram_required_by_a_real_broker() {
    use crm_common::events::{CallDirection, CallEvent};
    use crm_common::kafka::{reader::TopicReader, Kafka};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    const PASSWORD: &str = "scram-pw-4d1e";
    let dir = std::env::temp_dir().join(format!("crm-sync-sasl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tansu = crm_dev::Tansu::start_with(&dir, &[]).expect("tansu (cargo install tansu --locked --features libsql; scripts/test does)");
    let made = Command::new("tansu")
        .args(["user", "create", "crm-sync", PASSWORD, "--mechanism", "scram512", "--broker", &format!("tcp://{}", tansu.bootstrap)])
        .output()
        .expect("tansu user create");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    drop(tansu);
    let tansu = crm_dev::Tansu::start_with(&dir, &["--authentication"]).expect("tansu with authentication");
    let sasl = "security.protocol=SASL_PLAINTEXT,sasl.mechanisms=SCRAM-SHA-512,sasl.username=crm-sync";
    let options = |password: &str| -> Vec<(String, String)> {
        format!("{sasl},sasl.password={password}")
            .split(',')
            .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap())
            .collect()
    };
    let kafka = Kafka::new(&tansu.bootstrap, options(PASSWORD));
    let topics: Vec<String> = ["calls.raw", "calls.normalised", "sync.dlq", "sync.audit"].map(String::from).to_vec();
    crm_dev::create_topics(&kafka, &topics, 1).expect("topics over SASL");

    // Without SASL: the broker answers nothing.
    let plain: BaseConsumer = Kafka::local(&tansu.bootstrap).reader("plain").expect("client");
    assert!(plain.fetch_metadata(None, Duration::from_secs(5)).is_err(), "a client without SASL reads metadata");
    drop(plain);

    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("KAFKA_SASL_PASSWORD"), format!("{PASSWORD}\n")).unwrap();
    let tenants = crm_sync_tests::TempFile::new("tenants.toml", "[tenants.acme]\ndefault_region = \"US\"\n");
    let normaliser = |name: &str, env: &[(&str, &str)]| {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(crm_sync_tests::bin("normaliser"))
            .env("KAFKA_BOOTSTRAP_SERVERS", &tansu.bootstrap)
            .env("KAFKA_OPTIONS", format!("{sasl},session.timeout.ms=6000,heartbeat.interval.ms=500"))
            .env("TENANTS_CONFIG", tenants.path())
            .env("CONSUMER_GROUP", name)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("normaliser");
        (child, log)
    };
    let (mut good, _) = normaliser("sasl-good", &[("CRM_SYNC_SECRETS_DIR", secrets.to_str().unwrap())]);
    let call = CallEvent {
        tenant_id: "acme".into(),
        call_id: "sasl-1".into(),
        source: "pbx".into(),
        version: 1,
        direction: CallDirection::Outbound,
        from_number: "(415) 555-2671".into(),
        to_number: "(415) 555-0199".into(),
        region_hint: None,
        started_at: 1_767_225_600_000,
        ended_at: None,
        duration_s: None,
        outcome: None,
        agent_id: "agent-1".into(),
        agent_email: None,
        recording_url: None,
        notes: None,
        attributes: Default::default(),
    };
    let producer = kafka.threaded_producer(&[]).expect("producer over SASL");
    let payload = crm_common::codec::encode(&call).unwrap();
    producer.send(rdkafka::producer::BaseRecord::to("calls.raw").key("acme").payload(&payload)).map_err(|(e, _)| e).expect("send");
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)).expect("acknowledged over SASL");
    let out = TopicReader::new(&kafka, &["calls.normalised"]).expect("reader").read_until(Duration::from_secs(90), |m| !m.is_empty());
    let _ = good.kill();
    let _ = good.wait();
    assert_eq!(out.len(), 1, "the normaliser consumed and produced over SASL");
    let n: crm_common::events::NormalisedCall = crm_common::codec::decode(out[0].payload.as_deref().unwrap()).unwrap();
    assert_eq!((n.call_id.as_str(), n.customer_e164.as_str()), ("sasl-1", "+14155550199"));

    // The wrong password: refused, said in the log, never shown there.
    let wrong = "not-the-password-7q";
    let (mut bad, log) = normaliser("sasl-bad", &[("KAFKA_SASL_PASSWORD", wrong)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    while Instant::now() < deadline && !text.contains("SASL authentication error") {
        std::thread::sleep(Duration::from_millis(200));
        text = std::fs::read_to_string(&log).unwrap_or_default();
    }
    let _ = bad.kill();
    let _ = bad.wait();
    assert!(text.contains("SASL authentication error"), "{text}");
    assert!(!text.contains(wrong) && !text.contains(PASSWORD), "a password in the log: {text}");
    drop(producer);
    drop(tansu);
    let _ = std::fs::remove_dir_all(&dir);
}
