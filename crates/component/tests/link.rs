//! The link against an in-process fake server over real TCP.

mod support;

use std::time::{Duration, Instant};

use dmuc_component::{Error, Inbound, KeepaliveConfig, Link, spawn};
use support::{Accepted, FakeServer, ServerConn, config, message};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Generous bound so a stuck test fails instead of hanging; never used to
/// wait for something to happen.
const STUCK: Duration = Duration::from_secs(30);

async fn next(link: &mut Link) -> Inbound {
    timeout(STUCK, link.inbound.recv())
        .await
        .expect("no inbound event in time")
        .expect("link ended")
}

async fn expect_connected(link: &mut Link) -> String {
    match next(link).await {
        Inbound::Connected { stream_id, .. } => stream_id,
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn expect_stanza(link: &mut Link) -> dmuc_component::minidom::Element {
    match next(link).await {
        Inbound::Stanza(el) => el,
        other => panic!("expected a stanza, got {other:?}"),
    }
}

async fn accept(server: &mut FakeServer) -> ServerConn {
    timeout(STUCK, server.accept_ok())
        .await
        .expect("no connection in time")
}

async fn recv(conn: &mut ServerConn) -> dmuc_component::minidom::Element {
    timeout(STUCK, conn.recv())
        .await
        .expect("nothing received in time")
        .expect("stream closed")
}

#[tokio::test]
async fn handshake_succeeds() {
    let mut server = FakeServer::bind("s3cret").await;
    let mut link = spawn(config(server.addr(), "s3cret"), CancellationToken::new()).unwrap();
    let conn = accept(&mut server).await;
    assert_eq!(expect_connected(&mut link).await, conn.stream_id);
}

#[tokio::test]
async fn wrong_secret_is_auth_error_and_retried() {
    let mut server = FakeServer::bind("right").await;
    let mut link = spawn(config(server.addr(), "wrong"), CancellationToken::new()).unwrap();
    for _ in 0..2 {
        assert!(matches!(server.accept().await, Accepted::Rejected));
        match next(&mut link).await {
            Inbound::Disconnected {
                reason: Error::Auth(text),
                ..
            } => assert!(text.contains("does not match"), "{text}"),
            other => panic!("expected Disconnected(Auth), got {other:?}"),
        }
    }
}

#[tokio::test]
async fn inbound_stanzas_arrive_in_order() {
    let mut server = FakeServer::bind("s").await;
    let mut link = spawn(config(server.addr(), "s"), CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;
    const N: usize = 2_000;
    let sender = tokio::spawn(async move {
        for n in 0..N {
            let mut xml = Vec::new();
            message(n).write_to(&mut xml).unwrap();
            // Whitespace between stanzas, as servers send for keepalive.
            conn.send_raw(&(String::from_utf8(xml).unwrap() + "\n"))
                .await;
        }
        conn
    });
    for n in 0..N {
        let el = expect_stanza(&mut link).await;
        assert_eq!(el.attr("id"), Some(format!("m{n}").as_str()));
    }
    sender.await.unwrap();
}

#[tokio::test]
async fn odd_stanzas_are_delivered_raw_and_do_not_end_the_link() {
    let mut server = FakeServer::bind("s").await;
    let mut link = spawn(config(server.addr(), "s"), CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;

    conn.send_raw(
        "<message type='bogus' to='x@y' from='not a jid@@'><foo xmlns='urn:x'/></message>",
    )
    .await;
    // Unknown attribute, unknown top-level element, missing everything.
    conn.send_raw("<presence frobnicate='yes'/><weird xmlns='urn:y'/><iq/>")
        .await;
    // Too deep to build: delivered as Invalid with its raw head.
    let deep = "<x>".repeat(dmuc_component::MAX_STANZA_DEPTH + 1)
        + &"</x>".repeat(dmuc_component::MAX_STANZA_DEPTH + 1);
    conn.send_raw(&format!(
        "<message from='u@b.test/r' to='room@{}' id='deep' type='chat'>{deep}</message>",
        support::JID
    ))
    .await;
    conn.send_raw("<message id='after'/>").await;

    let bogus = expect_stanza(&mut link).await;
    assert_eq!(bogus.name(), "message");
    assert_eq!(bogus.ns(), support::COMPONENT_NS);
    assert_eq!(bogus.attr("type"), Some("bogus"));
    assert_eq!(bogus.attr("from"), Some("not a jid@@"));
    assert_eq!(bogus.attr("to"), Some("x@y"));
    assert!(bogus.has_child("foo", "urn:x"));

    let presence = expect_stanza(&mut link).await;
    assert_eq!(presence.attr("frobnicate"), Some("yes"));
    assert!(expect_stanza(&mut link).await.is("weird", "urn:y"));
    assert_eq!(expect_stanza(&mut link).await.name(), "iq");

    match next(&mut link).await {
        Inbound::Invalid(inv) => {
            assert_eq!(inv.name, "message");
            assert_eq!(inv.id.as_deref(), Some("deep"));
            assert_eq!(inv.from.as_deref(), Some("u@b.test/r"));
            assert_eq!(inv.type_.as_deref(), Some("chat"));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(expect_stanza(&mut link).await.attr("id"), Some("after"));

    // Still the same session: the link answers on it.
    link.handle.send(message(1)).await.unwrap();
    assert_eq!(recv(&mut conn).await.attr("id"), Some("m1"));
}

#[tokio::test]
async fn server_close_reconnects_and_delivers_queued_stanzas() {
    let mut server = FakeServer::bind("s").await;
    let mut link = spawn(config(server.addr(), "s"), CancellationToken::new()).unwrap();
    let conn = accept(&mut server).await;
    expect_connected(&mut link).await;

    conn.close().await;
    match next(&mut link).await {
        Inbound::Disconnected {
            reason: Error::StreamClosed,
            ..
        } => {}
        other => panic!("expected Disconnected(StreamClosed), got {other:?}"),
    }
    // Nobody has accepted the reconnect yet: these wait in the queue.
    for n in 0..100 {
        link.handle.send(message(n)).await.unwrap();
    }
    let mut conn = accept(&mut server).await;
    assert_eq!(expect_connected(&mut link).await, conn.stream_id);
    for n in 0..100 {
        assert_eq!(
            recv(&mut conn).await.attr("id"),
            Some(format!("m{n}").as_str())
        );
    }
}

#[tokio::test]
async fn stream_error_is_reported_with_condition() {
    let mut server = FakeServer::bind("s").await;
    let mut link = spawn(config(server.addr(), "s"), CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;
    conn.send_raw(
        "<stream:error><invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
    )
    .await;
    match next(&mut link).await {
        Inbound::Disconnected {
            reason: Error::Stream { condition, .. },
            ..
        } => assert_eq!(condition, "invalid-from"),
        other => panic!("expected Disconnected(Stream), got {other:?}"),
    }
    accept(&mut server).await;
    expect_connected(&mut link).await;
}

#[tokio::test]
async fn outbound_order_and_count_under_load() {
    const N: usize = 50_000;
    let mut server = FakeServer::bind("s").await;
    let mut link = spawn(config(server.addr(), "s"), CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;

    let handle = link.handle.clone();
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for n in 0..N {
            handle.send(message(n)).await.unwrap();
        }
    });
    for n in 0..N {
        let el = recv(&mut conn).await;
        assert_eq!(
            el.attr("id"),
            Some(format!("m{n}").as_str()),
            "out of order"
        );
    }
    let elapsed = started.elapsed();
    producer.await.unwrap();
    eprintln!(
        "outbound: {N} stanzas in {elapsed:?} = {:.0} stanzas/s",
        N as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn inbound_throughput() {
    const N: usize = 50_000;
    let mut server = FakeServer::bind("s").await;
    let mut link = spawn(config(server.addr(), "s"), CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;

    let mut xml = String::new();
    for n in 0..N {
        let mut buf = Vec::new();
        message(n).write_to(&mut buf).unwrap();
        xml.push_str(std::str::from_utf8(&buf).unwrap());
    }
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        conn.send_raw(&xml).await;
        conn
    });
    for n in 0..N {
        let el = expect_stanza(&mut link).await;
        assert_eq!(el.attr("id"), Some(format!("m{n}").as_str()));
    }
    let elapsed = started.elapsed();
    sender.await.unwrap();
    eprintln!(
        "inbound: {N} stanzas in {elapsed:?} = {:.0} stanzas/s",
        N as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn keepalive_pings_keep_an_idle_link_up_and_detect_a_dead_one() {
    let mut server = FakeServer::bind("s").await;
    let mut cfg = config(server.addr(), "s");
    cfg.keepalive = KeepaliveConfig {
        idle: Duration::from_millis(100),
        timeout: Duration::from_millis(200),
        ping_to: None,
    };
    let mut link = spawn(cfg, CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;

    // Idle periods: the link pings, we answer, it stays up.
    for _ in 0..3 {
        let ping = recv(&mut conn).await;
        assert_eq!(ping.name(), "iq");
        assert_eq!(ping.attr("type"), Some("get"));
        assert_eq!(ping.attr("to"), Some("a.test"));
        assert_eq!(ping.attr("from"), Some(support::JID));
        assert!(ping.has_child("ping", "urn:xmpp:ping"));
        let id = ping.attr("id").unwrap();
        conn.send_raw(&format!(
            "<iq type='result' id='{id}' from='a.test' to='{}'/>",
            support::JID
        ))
        .await;
    }
    // Now a half-dead link: TCP stays open, nothing comes back.
    let _ = recv(&mut conn).await;
    match next(&mut link).await {
        Inbound::Disconnected {
            reason: Error::KeepaliveTimeout(_),
            ..
        } => {}
        other => panic!("expected Disconnected(KeepaliveTimeout), got {other:?}"),
    }
    // The pong replies were consumed by the link, not delivered: the only
    // events were Connected and this Disconnected.
}

#[tokio::test]
async fn shutdown_flushes_queue_and_closes_stream() {
    let mut server = FakeServer::bind("s").await;
    let shutdown = CancellationToken::new();
    let mut link = spawn(config(server.addr(), "s"), shutdown.clone()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;

    const N: usize = 5_000;
    for n in 0..N {
        link.handle.send(message(n)).await.unwrap();
    }
    shutdown.cancel();
    for n in 0..N {
        assert_eq!(
            recv(&mut conn).await.attr("id"),
            Some(format!("m{n}").as_str())
        );
    }
    // Then the stream footer.
    assert!(timeout(STUCK, conn.recv()).await.unwrap().is_none());
    conn.close().await;
    timeout(STUCK, link.task).await.unwrap().unwrap();
    assert!(link.inbound.recv().await.is_none());
    assert!(matches!(
        link.handle.send(message(0)).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn dropping_every_handle_closes_the_stream() {
    let mut server = FakeServer::bind("s").await;
    let Link {
        handle,
        mut inbound,
        task,
    } = spawn(config(server.addr(), "s"), CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    assert!(matches!(
        inbound.recv().await,
        Some(Inbound::Connected { .. })
    ));
    handle.send(message(7)).await.unwrap();
    drop(handle);
    assert_eq!(recv(&mut conn).await.attr("id"), Some("m7"));
    assert!(timeout(STUCK, conn.recv()).await.unwrap().is_none());
    conn.close().await;
    timeout(STUCK, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn unreachable_server_is_retried_until_it_appears() {
    // Bind to learn a free port, then close it: the first attempts are refused.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let mut link = spawn(config(addr, "s"), CancellationToken::new()).unwrap();
    match next(&mut link).await {
        Inbound::Disconnected {
            reason: Error::Connect { .. },
            ..
        } => {}
        other => panic!("expected Disconnected(Connect), got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_config_is_rejected_up_front() {
    let mut c = config("127.0.0.1:1".parse().unwrap(), "s");
    c.max_batch = 0;
    assert!(matches!(
        spawn(c, CancellationToken::new()),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn stanzas_in_and_out_are_counted() {
    use dmuc_component::metrics::{LinkMetrics, Metrics};
    let metrics = Metrics::new();
    let mut server = FakeServer::bind("s").await;
    let mut config = config(server.addr(), "s");
    config.metrics = LinkMetrics::register(&metrics);
    let counters = config.metrics.clone();
    let mut link = spawn(config, CancellationToken::new()).unwrap();
    let mut conn = accept(&mut server).await;
    expect_connected(&mut link).await;
    for n in 0..3 {
        let mut xml = Vec::new();
        message(n).write_to(&mut xml).unwrap();
        conn.send_raw(&String::from_utf8(xml).unwrap()).await;
        expect_stanza(&mut link).await;
    }
    assert_eq!(counters.stanzas_in.get(), 3);
    for n in 0..5 {
        link.handle.send(message(n)).await.unwrap();
        recv(&mut conn).await;
    }
    // Counted once the flush returns, which may be just after the server read it.
    let deadline = Instant::now() + STUCK;
    while counters.stanzas_out.get() < 5 {
        assert!(Instant::now() < deadline, "outbound stanzas not counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(counters.stanzas_out.get(), 5);
    let text = metrics.render();
    assert!(text.contains("dmuc_stanzas_in_total 3\n"), "{text}");
    assert!(text.contains("dmuc_stanzas_out_total 5\n"), "{text}");
}
