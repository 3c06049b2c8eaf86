//! The OpenAPI document describes exactly the routes the router serves.

use std::collections::BTreeSet;

use crate::util::TestServer;

fn described() -> BTreeSet<(String, String)> {
    let doc: serde_json::Value =
        serde_json::from_str(server::OPENAPI_JSON).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let paths = doc["paths"].as_object().expect("a paths object");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item").keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_described_and_every_description_is_served() {
    let served: BTreeSet<(String, String)> = server::routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let described = described();
    let undescribed: Vec<_> = served.difference(&described).collect();
    let unserved: Vec<_> = described.difference(&served).collect();
    assert!(
        undescribed.is_empty(),
        "routes missing from openapi.json: {undescribed:?}"
    );
    assert!(
        unserved.is_empty(),
        "openapi.json describes routes not served: {unserved:?}"
    );
}

#[test]
fn every_schema_reference_resolves() {
    let doc: serde_json::Value = serde_json::from_str(server::OPENAPI_JSON).expect("JSON");
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    } else {
                        refs(v, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "$ref {r} names no schema"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_served_and_the_page_loads_nothing_from_elsewhere() {
    let s = TestServer::start(|_| {}).await;
    let served = s.get_json("/api/openapi.json").await;
    let built: serde_json::Value = serde_json::from_str(server::OPENAPI_JSON).expect("JSON");
    assert_eq!(served, built);

    let page = s.client.get(s.url("/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.expect("body");
    for asset in ["/app.js", "/style.css"] {
        assert!(html.contains(asset), "the page does not load {asset}");
        let res = s.client.get(s.url(asset)).send().await.expect("GET asset");
        assert_eq!(res.status(), 200, "{asset}");
    }
    // Dependency-free: no absolute URL to another host anywhere in the page.
    for asset in ["/", "/app.js", "/style.css"] {
        let text = s
            .client
            .get(s.url(asset))
            .send()
            .await
            .expect("GET")
            .text()
            .await
            .expect("body");
        // The SVG namespace is a name, not a place the page loads from.
        let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "{asset} refers to another host"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_json_404s_pointing_at_the_document() {
    let s = TestServer::start(|_| {}).await;
    let res = s.client.get(s.url("/api/nope")).send().await.expect("GET");
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("/api/openapi.json"),
        "{body}"
    );
}
