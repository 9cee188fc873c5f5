//! The web dashboard (`/ui`) in a real headless Chromium driven over WebDriver
//! (chromedriver): log in, see the three nodes of a cluster, kick a session and watch it
//! disappear; manage users, page through more than a page of them, see each member's
//! lag, remove a dead member, log out. `make test` installs `chromium` and
//! `chromium-driver`. Each test leaves a screenshot in the temp dir (docs/img has them).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{three_joined_each, wait_voters, Proc};
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

/// Three joined nodes, each with an http listener (its port returned) for the dashboard.
fn three_with_dashboards(root: &std::path::Path) -> (Vec<u16>, Vec<Proc>) {
    let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let nodes = three_joined_each(root, |i| {
        vec!["-l".into(), format!("http://127.0.0.1:{}", http[i])]
    });
    wait_voters(&nodes[0], 3);
    (http, nodes)
}

/// A headless Chromium on `driver`, showing the dashboard of the node on `http`.
async fn open_dashboard(driver: &Driver, http: u16) -> fantoccini::Client {
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
        .goto(&format!("http://127.0.0.1:{http}/ui"))
        .await
        .unwrap();
    browser
}

/// Submits the login form as root with `pass`.
async fn log_in(browser: &fantoccini::Client, pass: &str) {
    type_into(browser, "login-user", "root").await;
    type_into(browser, "login-pass", pass).await;
    press(browser, "login-button").await;
}

/// Types into the field `id`, replacing what it held.
async fn type_into(browser: &fantoccini::Client, id: &str, text: &str) {
    let field = browser.find(Locator::Id(id)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Runs `script` until it answers true: tables are rebuilt every 2 s, so each look (and
/// each click) is one script that finds its element afresh.
async fn until_js(
    browser: &fantoccini::Client,
    what: &str,
    script: &str,
    args: Vec<serde_json::Value>,
) {
    until(Duration::from_secs(30), what, || async {
        browser.execute(script, args.clone()).await.unwrap() == json!(true)
    })
    .await;
}

/// Clicks the enabled button `css` finds, as soon as there is one.
async fn click(browser: &fantoccini::Client, what: &str, css: &str) {
    until_js(
        browser,
        what,
        "const b = document.querySelector(arguments[0]);
        if (b && !b.disabled) { b.click(); return true; } return false;",
        vec![json!(css)],
    )
    .await;
}

/// The button of `action` on the row of `target`.
fn action(action: &str, target: &str) -> String {
    format!("button[data-action='{action}'][data-target='{target}']")
}

/// Clicks the element with this id (forms and the header: not rebuilt by refreshes).
async fn press(browser: &fantoccini::Client, id: &str) {
    let element = browser.find(Locator::Id(id)).await.unwrap();
    element.click().await.unwrap();
}

async fn screenshot(browser: &fantoccini::Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = std::env::temp_dir().join(name);
    std::fs::write(&shot, &png).unwrap();
    eprintln!(
        "dashboard screenshot ({} bytes): {}",
        png.len(),
        shot.display()
    );
}

#[tokio::test(flavor = "current_thread")]
async fn manage_users_page_beyond_a_page_see_lag_remove_a_dead_member_and_log_out() {
    let root = tempfile::tempdir().unwrap();
    let (http, mut nodes) = three_with_dashboards(root.path());
    let mut admin = nodes[0].root();
    // More users than one page (100) holds: the count is the true one.
    for i in 0..150 {
        create_user(&mut admin, &format!("page.u{i:03}"), "paged-pw");
    }

    let driver = Driver::start();
    let browser = open_dashboard(&driver, http[0]).await;
    log_in(&browser, ROOT_PASS).await;

    // 151 users (root too), 100 on the first page, the rest on the next.
    until_js(
        &browser,
        "the true user count",
        "return document.getElementById('users-count').innerText === '(151)'
        && document.querySelectorAll('#users tbody tr').length === 100",
        vec![],
    )
    .await;
    click(
        &browser,
        "the next page",
        "#users-pager button[data-page=next]",
    )
    .await;
    until_js(
        &browser,
        "the second page",
        "return document.querySelectorAll('#users tbody tr').length === 51
        && document.querySelector('#users-pager .range').innerText === 'users 101–151 of 151'",
        vec![],
    )
    .await;
    click(
        &browser,
        "the first page again",
        "#users-pager button[data-page=prev]",
    )
    .await;

    // Each member's applied index and lag are numbers.
    until_js(
        &browser,
        "applied and lag per node",
        "const rows = Array.from(document.querySelectorAll('#nodes tbody tr'));
        return rows.length === 3 && rows.every(r => /^[0-9]+$/.test(r.cells[3].innerText)
            && Number(r.cells[3].innerText) > 0 && /^[0-9]+$/.test(r.cells[4].innerText));",
        vec![],
    )
    .await;

    // Create a user, give it tags, disable it: each seen by another client.
    type_into(&browser, "new-user", "ui.made").await;
    type_into(&browser, "new-pass", "made-pw-1").await;
    press(&browser, "user-create-button").await;
    assert!(eventually(Duration::from_secs(20), || {
        admin
            .call("user.getTags", json!({"user": "ui.made"}))
            .is_ok()
    }));
    let mut made = Client::tcp(format!("127.0.0.1:{}", nodes[1].tcp).parse().unwrap());
    expect_ok(made.login("ui.made", "made-pw-1"));
    type_into(&browser, "tags-user", "ui.made").await;
    type_into(&browser, "tags-prefix", "jobs").await;
    type_into(&browser, "tags-json", r#"{"@task.pull": true}"#).await;
    press(&browser, "user-tags-button").await;
    assert!(eventually(Duration::from_secs(20), || {
        expect_ok(admin.call("user.getTags", json!({"user": "ui.made"})))["tags"]["jobs"]
            ["@task.pull"]
            == json!(true)
    }));
    // ui.made sorts after page.*: on the second page.
    until_js(
        &browser,
        "the disable button",
        "const b = document.querySelector('#users-pager button[data-page=next]');
        if (b && !b.disabled) b.click();
        const d = document.querySelector(`button[data-action='disable'][data-target='ui.made']`);
        if (d && !d.disabled) { d.click(); return true; } return false;",
        vec![],
    )
    .await;
    assert!(eventually(Duration::from_secs(20), || {
        let list = expect_ok(admin.call("user.list", json!({"prefix": "ui"})));
        list[0]["disabled"] == json!(true)
    }));
    let mut refused = Client::tcp(format!("127.0.0.1:{}", nodes[1].tcp).parse().unwrap());
    assert_eq!(
        refused.login("ui.made", "made-pw-1").unwrap_err().code,
        -32010
    );

    // Delete takes two clicks: one arms, the second deletes.
    let delete = action("delete", "user:ui.made");
    click(&browser, "the delete button armed", &delete).await;
    // Armed, it says so; the user is still there (a delete on the first click would
    // have left no armed button to find, the refresh showing the user gone).
    until_js(
        &browser,
        "the delete button saying confirm",
        "const b = document.querySelector(arguments[0]);
        return !!b && b.classList.contains('armed') && b.innerText === 'confirm delete';",
        vec![json!(delete)],
    )
    .await;
    assert!(
        admin
            .call("user.getTags", json!({"user": "ui.made"}))
            .is_ok(),
        "one click deletes nothing"
    );
    click(&browser, "the delete confirmed", &format!("{delete}.armed")).await;
    assert!(eventually(Duration::from_secs(20), || {
        admin
            .call("user.getTags", json!({"user": "ui.made"}))
            .is_err()
    }));

    // A dead member is shown as such and removed with two clicks.
    let dead = nodes[2].raft_id();
    nodes[2].kill9();
    let remove = action("remove", &format!("node:{dead}"));
    until_js(
        &browser,
        "the dead member",
        "const r = document.querySelector(`#nodes tbody tr[data-key='${arguments[0]}']`);
        return !!r && r.cells[2].innerText !== 'ready';",
        vec![json!(dead.to_string())],
    )
    .await;
    screenshot(&browser, "nexus-dashboard-manage.png").await;
    click(&browser, "the remove button armed", &remove).await;
    click(&browser, "the remove confirmed", &format!("{remove}.armed")).await;
    assert!(
        eventually(Duration::from_secs(30), || {
            let list = expect_ok(admin.call("sys.node.list", json!({"all": true})));
            list.as_array()
                .unwrap()
                .iter()
                .all(|n| n["raftId"].as_u64() != Some(dead))
        }),
        "the member was not removed"
    );

    // Logging out ends the page's session on the node.
    let root_sessions = |admin: &mut Client| {
        expect_ok(admin.call("sys.session.count", json!({"prefix": "root"})))["count"]
            .as_u64()
            .unwrap()
    };
    let before = root_sessions(&mut admin);
    press(&browser, "logout").await;
    until_js(
        &browser,
        "the login form",
        "return !document.getElementById('login').classList.contains('hidden')
        && document.getElementById('app').classList.contains('hidden')",
        vec![],
    )
    .await;
    assert!(eventually(Duration::from_secs(20), || root_sessions(
        &mut admin
    ) == before - 1));
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn log_in_see_three_nodes_and_kick_a_session() {
    let root = tempfile::tempdir().unwrap();
    let (http, nodes) = three_with_dashboards(root.path());
    let raft_ids: Vec<String> = nodes.iter().map(|n| n.raft_id().to_string()).collect();

    // The session to kick lives on another node than the one serving the page.
    let mut admin = nodes[0].root();
    create_user(&mut admin, "ui.victim", "victim-pw");
    let mut victim = Client::tcp(format!("127.0.0.1:{}", nodes[2].tcp).parse().unwrap());
    let connid = connid(&mut victim, "ui.victim", "victim-pw");

    let driver = Driver::start();
    let browser = open_dashboard(&driver, http[0]).await;
    // A wrong password is refused on the page.
    log_in(&browser, "wrong").await;
    until(Duration::from_secs(20), "the login error", || async {
        let error = browser.find(Locator::Id("login-error")).await.unwrap();
        error.text().await.unwrap().contains("-32010")
    })
    .await;
    log_in(&browser, ROOT_PASS).await;

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
    screenshot(&browser, "nexus-dashboard.png").await;

    // Clicked from a script: a refresh may replace the button.
    click(
        &browser,
        "the kick button clicked",
        &action("kick", &connid),
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
