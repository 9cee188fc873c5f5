//! The web dashboard (`/ui`) in a real headless Chromium driven over WebDriver
//! (chromedriver): log in, see the three nodes of a cluster, kick a session and watch it
//! disappear. `make test` installs `chromium` and `chromium-driver`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{three_joined_each, wait_voters};
use common::{connid, create_user, eventually, expect_ok, free_port, Client, ROOT_PASS};
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// chromedriver on a free loopback port, with a Chromium profile directory of its own.
/// Dropped (also when a test fails midway), it kills chromedriver and every process
/// started on that profile: Chromium's processes are not chromedriver's children for long.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver not found: install chromium and chromium-driver (make test does)",
            );
        let up = eventually(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "chromedriver did not listen on {port}");
        let profile = tempfile::tempdir().unwrap();
        Driver {
            child,
            port,
            profile,
        }
    }

    fn profile_arg(&self) -> String {
        format!("--user-data-dir={}", self.profile.path().display())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let marker = self.profile_arg();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Polls `check` until it is true or `within` has passed.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn log_in_see_three_nodes_and_kick_a_session() {
    let root = tempfile::tempdir().unwrap();
    let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes = three_joined_each(root.path(), |i| {
        vec!["-l".into(), format!("http://127.0.0.1:{}", http[i])]
    });
    wait_voters(&nodes[0], 3);
    let raft_ids: Vec<String> = nodes.iter().map(|n| n.raft_id().to_string()).collect();

    // The session to kick lives on another node than the one serving the page.
    let mut admin = nodes[0].root();
    create_user(&mut admin, "ui.victim", "victim-pw");
    let mut victim = Client::tcp(format!("127.0.0.1:{}", nodes[2].tcp).parse().unwrap());
    let connid = connid(&mut victim, "ui.victim", "victim-pw");

    let driver = Driver::start();
    let caps = json!({"goog:chromeOptions": {"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--window-size=1400,1000", driver.profile_arg(),
    ]}});
    let browser = ClientBuilder::new(HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver");

    browser
        .goto(&format!("http://127.0.0.1:{}/ui", http[0]))
        .await
        .unwrap();
    // A wrong password is refused on the page.
    let field = |id: &'static str| browser.find(Locator::Id(id));
    field("login-user")
        .await
        .unwrap()
        .send_keys("root")
        .await
        .unwrap();
    field("login-pass")
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    field("login-button").await.unwrap().click().await.unwrap();
    until(Duration::from_secs(20), "the login error", || async {
        let text = field("login-error").await.unwrap().text().await.unwrap();
        text.contains("-32010")
    })
    .await;
    field("login-pass").await.unwrap().clear().await.unwrap();
    field("login-pass")
        .await
        .unwrap()
        .send_keys(ROOT_PASS)
        .await
        .unwrap();
    field("login-button").await.unwrap().click().await.unwrap();

    // Three nodes, one leader, each by its raft id, all ready. The table is rebuilt every
    // 2 s, so each look reads it whole in one script (no element kept across calls).
    let mut want = raft_ids.clone();
    want.sort();
    until(Duration::from_secs(30), "three ready nodes", || async {
        let rows = browser
            .execute(
                "return Array.from(document.querySelectorAll('#nodes tbody tr'))
                    .map(r => [r.dataset.key || '', r.cells[1].innerText, r.cells[2].innerText])",
                vec![],
            )
            .await
            .unwrap();
        let rows: Vec<(String, String, String)> = serde_json::from_value(rows).unwrap_or_default();
        let mut keys: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        keys.sort();
        keys == want
            && rows.iter().filter(|r| r.1 == "leader").count() == 1
            && rows.iter().all(|r| r.2 == "ready")
    })
    .await;

    // The victim's session is listed; kick it from the page.
    let row = format!("#sessions tbody tr[data-key='{connid}']");
    until(
        Duration::from_secs(30),
        "the victim's session row",
        || async { browser.find(Locator::Css(&row)).await.is_ok() },
    )
    .await;
    let png = browser.screenshot().await.unwrap();
    let shot = std::env::temp_dir().join("nexus-dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!(
        "dashboard screenshot ({} bytes): {}",
        png.len(),
        shot.display()
    );
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");

    // Clicked from a script for the same reason: a refresh may replace the button.
    let kick = format!("button.kick[data-connid='{connid}']");
    until(
        Duration::from_secs(30),
        "the kick button clicked",
        || async {
            let clicked = browser
                .execute(
                    "const b = document.querySelector(arguments[0]); if (b) b.click(); return !!b",
                    vec![json!(kick)],
                )
                .await
                .unwrap();
            clicked == json!(true)
        },
    )
    .await;
    until(
        Duration::from_secs(30),
        "the session row to disappear",
        || async {
            browser
                .find_all(Locator::Css(&row))
                .await
                .unwrap()
                .is_empty()
        },
    )
    .await;
    assert!(victim.closed_within(Duration::from_secs(10)));
    let sessions = expect_ok(admin.call("sys.session.list", json!({"prefix": "ui"})));
    assert_eq!(sessions, json!([]));

    browser.close().await.unwrap();
}
