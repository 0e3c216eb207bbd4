//! PostgreSQL for tests: each test gets a database of its own on the machine's server,
//! dropped when the test ends, so tests run in parallel and leave nothing behind.

use std::time::Duration;

/// The machine's PostgreSQL (trust auth).
pub const MACHINE_PG: &str = "postgres://postgres@127.0.0.1:5432";

pub struct PrivateDb {
    pub name: String,
    /// `DATABASE_URL` for services under test.
    pub url: String,
    rt: tokio::runtime::Runtime,
}

impl PrivateDb {
    pub fn new(label: &str) -> PrivateDb {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let name = format!("t_{label}_{}", uuid::Uuid::new_v4().simple()).chars().take(60).collect::<String>();
        let url = rt
            .block_on(crm_common::audit_store::create_database(&format!("{MACHINE_PG}/postgres"), &name))
            .expect("a database on the machine's PostgreSQL");
        PrivateDb { name, url, rt }
    }

    /// Runs a query and returns its rows.
    pub fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    fn try_query(&self, sql: &str) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        self.rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.expect("connect");
            let driver = tokio::spawn(conn);
            let rows = client.query(sql, &[]).await;
            drop(client);
            let _ = driver.await;
            rows
        })
    }

    /// The single number a query returns. A table the audit-sink has not created yet (a
    /// test polls before the sink has started) holds nothing: 0.
    pub fn count(&self, sql: &str) -> i64 {
        match self.try_query(sql) {
            Ok(rows) => rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
            Err(e) => panic!("{sql}: {e:?}"),
        }
    }

    /// Polls `sql` (a count) until it reaches `n`.
    pub fn wait_count(&self, sql: &str, n: i64, timeout: Duration) -> i64 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let c = if self.query("SELECT to_regclass('public.audit') IS NOT NULL").first().is_some_and(|r| r.get::<_, bool>(0)) {
                self.count(sql)
            } else {
                0
            };
            if c >= n || std::time::Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        if let Err(e) = self.rt.block_on(crm_common::audit_store::drop_database(&format!("{MACHINE_PG}/postgres"), &self.name)) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}
