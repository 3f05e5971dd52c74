//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven over WebDriver): it logs in with a token,
//! shows an agent spawned and a task scheduled through the API without a
//! reload — from the event stream, not by polling — and highlights a
//! denial. The screenshot is kept as a test artifact.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::serve::{Api, Served};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `check` holds (the page updates on its own).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the dashboard never showed {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_agents_events_and_denials() {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "the browser test needs Debian's chromium and chromium-driver (.ci/run installs them: apt-get install chromium chromium-driver)"
    );
    let mut served = Served::start(&[]);
    let api = Api::new(&served).await;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut browser = None;
    for _ in 0..100 {
        match ClientBuilder::new(connector.clone())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => {
                browser = Some(client);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let browser = browser.expect("chromedriver did not start");

    // Log in with a read-only operator token.
    let reader = crate::toka(&served.data, &["token", "issue", "--operator", "read"])
        .ok()
        .trim()
        .to_owned();
    browser.goto(&served.url).await.unwrap();
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&reader)
        .await
        .unwrap();
    browser
        .find(Locator::Id("login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the live connection", || async {
        browser
            .find(Locator::Id("connection"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            == "live"
    })
    .await;
    // The token is in session storage, not in any URL the page loaded.
    let urls: Value = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    assert!(!urls.to_string().contains(&reader));

    // Through the API: an agent, a task; a probe that is denied.
    let install = |name: &'static str, bytes: Vec<u8>| {
        api.request(
            reqwest::Method::POST,
            &format!("/v1/components?name={name}"),
        )
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
    };
    let hello: Value = install("hello", toka_agents::bundled("hello").unwrap().to_vec())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spawned = api
        .post(
            "/v1/agents",
            "/v1/agents",
            json!({"component": hello["digest"], "name": "greeter", "rights": ["observe"]}),
        )
        .await;
    let agent = spawned.body["id"].as_str().unwrap().to_owned();
    let row = format!("tr[data-agent='{agent}']");
    until("the new agent", || async {
        browser.find(Locator::Css(&row)).await.is_ok()
    })
    .await;
    api.post(
        "/v1/agents/{id}/tasks",
        &format!("/v1/agents/{agent}/tasks"),
        json!({"description": "browser"}),
    )
    .await;
    until("the observation", || async {
        let list = browser
            .find(Locator::Id("events"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        list.contains("greeter observed: Hello, browser!")
    })
    .await;
    until("the completed count", || async {
        let text = browser
            .find(Locator::Css(&row))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.split_whitespace().rev().nth(1) == Some("1")
    })
    .await;
    let probe = std::fs::read(crate::agent_path("test-probe")).unwrap();
    let probe: Value = install("probe", probe).await.unwrap().json().await.unwrap();
    let snoop = api
        .post(
            "/v1/agents",
            "/v1/agents",
            json!({"component": probe["digest"], "name": "snoop", "rights": ["observe"]}),
        )
        .await;
    let snoop = snoop.body["id"].as_str().unwrap().to_owned();
    api.post(
        "/v1/agents/{id}/tasks",
        &format!("/v1/agents/{snoop}/tasks"),
        json!({"description": "put secret 1"}),
    )
    .await;
    until("the denial, highlighted", || async {
        browser
            .find(Locator::Css("#events li.trouble.kind-capability_denied"))
            .await
            .is_ok()
    })
    .await;
    // The agent's detail: its token's rights and its task.
    browser
        .find(Locator::Css(&row))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the agent's detail", || async {
        browser
            .find(Locator::Id("detail-token"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("observe")
    })
    .await;

    // An agent of an installed package shows its package and publisher.
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = crate::install::publisher(keys.path(), "acme");
    let pkg = crate::install::package(
        keys.path(),
        "probe.wasm",
        &crate::install::manifest("1.0.0", &["observe"]),
        &key,
    );
    crate::toka(
        &served.data,
        &["trust", "add", "acme", public.to_str().unwrap()],
    )
    .ok();
    crate::toka(&served.data, &["install", pkg.to_str().unwrap(), "--yes"]).ok();
    let packaged = api
        .post(
            "/v1/agents",
            "/v1/agents",
            json!({"package": "probe", "name": "packaged"}),
        )
        .await;
    let packaged = format!("tr[data-agent='{}']", packaged.body["id"].as_str().unwrap());
    until("the package and publisher columns", || async {
        match browser.find(Locator::Css(&packaged)).await {
            Ok(row) => {
                let text = row.text().await.unwrap();
                text.contains("probe 1.0.0") && text.contains("acme")
            }
            Err(_) => false,
        }
    })
    .await;

    // Live, not polled: the agent list was read once, at login.
    let urls: Value = browser
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    let agent_lists = urls
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u.as_str().unwrap().contains("/v1/agents?"))
        .count();
    assert_eq!(agent_lists, 1, "{urls}");

    let png = browser.screenshot().await.unwrap();
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&artifact, png).unwrap();
    println!("screenshot: {}", artifact.display());
    browser.close().await.unwrap();
    assert_eq!(served.stop().0, 0);
}
