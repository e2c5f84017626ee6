mod support;

use support::*;

#[tokio::test]
async fn a_created_token_reaches_its_upstream() {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .start()
        .await;
    let (secret, _) = gw.create_token("feed-a", &["security-director"]).await;
    let r = gw.get("/sd/x?a=1", Some(&secret)).await;
    r.expect(200, None);
    assert_eq!(up.last().target, "/x?a=1");
    assert_eq!(up.last().headers["x-tokengate-token"], "feed-a");
    gw.get("/sd/x", None)
        .await
        .expect(401, Some("missing_token"));
}
