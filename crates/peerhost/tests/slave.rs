//! The peerhost as a master sees it, end to end (see `common` for the
//! harness). Bob (b.test) receives everything from the slave through b.test
//! alone: no master, no s2s.

mod common;

use anyhow::{Context, Result, bail};
use common::{
    ALICE, MASTER, Master, PEER, Peerhost, ROOM, WAIT, frame, has_stanza_id, join, next, open, say,
    stanza_id,
};
use dmuc_protocol::pb::peering_client::PeeringClient;
use dmuc_protocol::pb::{self, master_frame, peer_frame};
use dmuc_testbed::stanza;
use dmuc_testbed::{Client, Testbed};

/// The testbed and an in-process peerhost with a fresh database; the
/// directory holding it lives as long as the test.
async fn start() -> Result<(Testbed, Peerhost, tempfile::TempDir)> {
    let testbed = common::testbed().await?;
    let dir = tempfile::tempdir()?;
    let peerhost = Peerhost::start(&testbed, &dir.path().join("peerhost.sqlite")).await?;
    Ok((testbed, peerhost, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_delivers_the_masters_events_to_its_domain() -> Result<()> {
    let (testbed, peerhost, _dir) = start().await?;
    let mut bob: Client = testbed.client("b.test", "bob").await?;
    let mut master = Master::connect(peerhost.addr).await?;

    // Bob joins (the master got his presence over s2s, say): the slave
    // renders his whole join sequence.
    let (bob_joins, _) = master.handle(join(bob.jid(), "bob"));
    let (hello, actions) = master.handle(say(ALICE, "hello from a.test"));
    let id = stanza_id(&actions);
    assert!(id.starts_with("1-"), "epoch 1: {id}");
    master.events(&[&bob_joins, &hello]).await?;

    let alice = bob
        .expect("alice's presence", |e| {
            stanza::is_presence(e) && stanza::from(e) == format!("{ROOM}/alice")
        })
        .await?;
    assert!(!stanza::has_status(&alice, 110));
    let own = bob
        .expect("own presence", |e| {
            stanza::is_presence(e) && stanza::from(e) == format!("{ROOM}/bob")
        })
        .await?;
    assert!(stanza::has_status(&own, 110), "{own:?}");
    bob.expect("the subject", |e| {
        stanza::is_message(e) && e.get_child("subject", stanza::NS_CLIENT).is_some()
    })
    .await?;
    let message = bob
        .expect("alice's message", |e| has_stanza_id(e, &id))
        .await?;
    assert_eq!(stanza::from(&message), format!("{ROOM}/alice"));
    assert_eq!(stanza::stanza_type(&message), "groupchat");
    master.acked(hello.seq).await?;

    // The same event again (say, resent after a reconnect) is dropped; the
    // next one is delivered, once.
    let (again, actions) = master.handle(say(ALICE, "second"));
    let second = stanza_id(&actions);
    master.events(&[&hello, &again]).await?;
    bob.expect("the second message", |e| has_stanza_id(e, &second))
        .await?;
    bob.expect_none_pending("the first message twice", |e| has_stanza_id(e, &id))?;
    master.acked(again.seq).await?;

    // A gap: the slave asks for a resync from what it has, and stalls.
    let (lost, actions) = master.handle(say(ALICE, "lost"));
    let lost_id = stanza_id(&actions);
    let (after_gap, actions) = master.handle(say(ALICE, "after the gap"));
    let after_gap_id = stanza_id(&actions);
    master.events(&[&after_gap]).await?;
    assert_eq!(master.resync().await?, (ROOM.to_owned(), again.seq));

    // The master still has the events: it resumes the slave, which goes on
    // from its state.
    master.resume(ROOM, again.seq).await?;
    master.events(&[&lost, &after_gap]).await?;
    bob.expect("the lost message", |e| has_stanza_id(e, &lost_id))
        .await?;
    bob.expect("the message after the gap", |e| {
        has_stanza_id(e, &after_gap_id)
    })
    .await?;
    master.acked(after_gap.seq).await?;

    // Events for a room without a slave: a resync from nothing.
    let mut stray = after_gap.clone();
    stray.room = "other@conference.a.test".parse()?;
    master.events(&[&stray]).await?;
    match next(&mut master.replies).await? {
        peer_frame::Frame::Resync(r) => {
            assert_eq!(
                (r.room.as_str(), r.have_seq),
                ("other@conference.a.test", 0)
            );
        }
        other => bail!("expected resync, got {other:?}"),
    }

    // Keepalives are echoed.
    master
        .send(master_frame::Frame::Keepalive(pb::Keepalive { nonce: 42 }))
        .await?;
    assert_eq!(
        next(&mut master.replies).await?,
        peer_frame::Frame::Keepalive(pb::Keepalive { nonce: 42 })
    );

    drop(master);
    peerhost.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_version_is_refused() -> Result<()> {
    let (_testbed, peerhost, _dir) = start().await?;
    let addr = peerhost.addr;
    let hello = pb::Hello {
        min_version: 2,
        max_version: 3,
        ..dmuc_protocol::hello(MASTER)
    };
    let (_frames, mut replies) = open(addr, hello).await?;
    match next(&mut replies).await? {
        peer_frame::Frame::Refused(r) => {
            assert!(
                r.reason.contains("no common protocol version"),
                "{}",
                r.reason
            )
        }
        other => bail!("expected refused, got {other:?}"),
    }
    // Then the peerhost ends the stream.
    let end = tokio::time::timeout(WAIT, replies.message()).await??;
    assert!(end.is_none());

    // A stream that does not start with hello is refused too.
    let mut client = PeeringClient::connect(format!("http://{addr}")).await?;
    let first = frame(master_frame::Frame::Keepalive(pb::Keepalive { nonce: 1 }));
    let mut replies = client
        .replicate(tokio_stream::iter(vec![first]))
        .await?
        .into_inner();
    match next(&mut replies).await? {
        peer_frame::Frame::Refused(r) => assert_eq!(r.reason, "the first frame must be hello"),
        other => bail!("expected refused, got {other:?}"),
    }

    peerhost.stop().await
}

/// How a master finds b.test's peerhost, over real s2s: b.test's server
/// lists the component in its disco#items, and the peerhost's disco#info
/// has the dmuc feature, the endpoint and the domain it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_find_the_peerhost_through_service_discovery() -> Result<()> {
    let (testbed, peerhost, _dir) = start().await?;
    let addr = peerhost.addr;
    let mut alice: Client = testbed.client("a.test", "alice").await?;
    alice.wait_for_service(PEER, WAIT).await?;

    let items = alice
        .iq_ok(
            "get",
            "b.test",
            "<query xmlns='http://jabber.org/protocol/disco#items'/>",
        )
        .await?;
    let listed: Vec<String> = items
        .children()
        .flat_map(|q| q.children())
        .filter_map(|i| i.attr("jid").map(str::to_owned))
        .collect();
    assert!(listed.iter().any(|j| j == PEER), "b.test lists {listed:?}");

    let info = alice
        .iq_ok(
            "get",
            PEER,
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
        .await?;
    assert!(
        stanza::disco_features(&info)
            .iter()
            .any(|f| f == dmuc_protocol::disco::FEATURE)
    );
    let form = stanza::find_form(&info).context("an XEP-0128 form")?;
    assert_eq!(
        stanza::form_values(form, "FORM_TYPE"),
        Some(vec![dmuc_protocol::disco::FORM_TYPE.to_owned()])
    );
    assert_eq!(
        stanza::form_values(form, dmuc_protocol::disco::ENDPOINT),
        Some(vec![format!("http://{addr}")])
    );
    assert_eq!(
        stanza::form_values(form, dmuc_protocol::disco::DOMAIN),
        Some(vec!["b.test".to_owned()])
    );

    peerhost.stop().await
}
