//! One room with occupants on all three domains: a.test (the master's),
//! b.test and c.test (each with a peerhost), over real s2s and mutual-TLS
//! gRPC. Messages from each domain, private messages between the two
//! slave domains, a nick change, a kick; every occupant sees each event
//! once, with the master's ids. Then the slaves' lifecycle: the last
//! b.test occupant leaves and, after the grace period, b.test's slave is
//! destroyed; a new b.test joiner gets a new one.

use std::time::Duration;

use dmuc_testbed::distributed::{self, Distributed, PeerhostSetup};
use dmuc_testbed::scenarios::MasterSetup;
use dmuc_testbed::stanza::{self, NS_SID};
use dmuc_testbed::{Client, Element, occupant_jid};

const ROOM: &str = "three@conference.a.test";

async fn system() -> Distributed {
    let master = env!("CARGO_BIN_EXE_dmuc-master");
    distributed::start_counted(
        master,
        &MasterSetup {
            peering_toml: "slave_grace_secs = 1\n".into(),
            ..MasterSetup::default()
        },
        &["b.test", "c.test"],
        &PeerhostSetup::default(),
    )
    .await
    .expect("system starts")
}

fn groupchat_with(body: &str) -> impl Fn(&Element) -> bool + '_ {
    move |el| {
        stanza::is_message(el)
            && stanza::stanza_type(el) == "groupchat"
            && stanza::body(el).as_deref() == Some(body)
    }
}

/// `sender` says `body`; every client gets it once, all with one stanza-id.
async fn say_to_all(sender: usize, clients: &mut [Client], body: &str) {
    let id = clients[sender].send_groupchat(ROOM, body).await.unwrap();
    let mut ids = Vec::new();
    for c in clients.iter_mut() {
        let got = c.expect(body, groupchat_with(body)).await.unwrap();
        ids.push(
            got.get_child("stanza-id", NS_SID)
                .and_then(|s| s.attr("id"))
                .map(str::to_owned),
        );
    }
    assert!(ids[0].is_some(), "{body}: no stanza-id");
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "{body}: ids differ: {ids:?}"
    );
    let reflected = clients[sender]
        .expect_none_pending("a second copy", groupchat_with(body))
        .map(|()| id);
    reflected.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_room_on_three_domains() {
    let system = system().await;
    let t = &system.testbed;
    let mut alice = t.client("a.test", "alice").await.unwrap();
    alice.create_instant_room(ROOM, "alice").await.unwrap();
    alice.say(ROOM, "before anyone else").await.unwrap();
    let mut clients = vec![alice];
    for (domain, nick) in [("b.test", "bob"), ("c.test", "carol"), ("b.test", "bea")] {
        let mut c = t.client(domain, nick).await.unwrap();
        let joined = c.join(ROOM, nick).await.unwrap();
        assert_eq!(
            joined.occupants.len(),
            clients.len(),
            "{nick} sees the roster"
        );
        assert_eq!(joined.history.len(), 1, "{nick} gets the history");
        for other in clients.iter_mut() {
            other
                .expect_presence_from(ROOM, nick, |p| stanza::stanza_type(p).is_empty())
                .await
                .unwrap();
        }
        clients.push(c);
    }
    let crossing = system.crossing().unwrap();
    assert!(crossing.grpc.bytes() > 0);

    // A message from each domain.
    say_to_all(0, &mut clients, "from a").await;
    say_to_all(1, &mut clients, "from b").await;
    say_to_all(2, &mut clients, "from c").await;

    // A private message from b.test to c.test, through the room.
    clients[1]
        .send_raw(&format!(
            "<message type='chat' to='{}' id='pm1'><body>psst</body></message>",
            occupant_jid(ROOM, "carol")
        ))
        .await
        .unwrap();
    let pm = clients[2]
        .expect("pm", |el| stanza::attr(el, "id") == "pm1")
        .await
        .unwrap();
    assert_eq!(stanza::from(&pm), occupant_jid(ROOM, "bob"));

    // bea (b.test) changes her nick; everyone sees it.
    clients[3]
        .send_raw(&format!(
            "<presence to='{}'/>",
            occupant_jid(ROOM, "beatrice")
        ))
        .await
        .unwrap();
    for c in clients.iter_mut() {
        c.expect_presence_from(ROOM, "beatrice", |p| stanza::stanza_type(p).is_empty())
            .await
            .unwrap();
    }

    // alice kicks carol (c.test): carol gets 307, the others see her go.
    let result = clients[0]
        .admin_set(ROOM, &[("nick", "carol"), ("role", "none")], None)
        .await
        .unwrap();
    assert_eq!(stanza::stanza_type(&result), "result");
    for c in clients.iter_mut() {
        let gone = c
            .expect_presence_from(ROOM, "carol", |p| stanza::stanza_type(p) == "unavailable")
            .await
            .unwrap();
        assert!(
            stanza::show(&gone).contains("307"),
            "{}",
            stanza::show(&gone)
        );
    }
    let carol = clients.remove(2);
    say_to_all(0, &mut clients, "after the kick").await;
    carol
        .expect_none_pending("a message after the kick", groupchat_with("after the kick"))
        .unwrap();

    // Both b.test occupants leave: after the grace period b.test's slave goes.
    clients[1].leave(ROOM, "bob").await.unwrap();
    clients[2].leave(ROOM, "beatrice").await.unwrap();
    system
        .master
        .wait_for_log("destroying slave domain=b.test", Duration::from_secs(15))
        .await
        .unwrap();
    // A new b.test joiner gets a new slave, which serves the join.
    let mut bill = t.client("b.test", "bill").await.unwrap();
    let before = system.crossing().unwrap();
    let joined = bill.join(ROOM, "bill").await.unwrap();
    assert_eq!(joined.history.len(), 5);
    clients[0]
        .expect_presence_from(ROOM, "bill", |p| stanza::stanza_type(p).is_empty())
        .await
        .unwrap();
    let crossed = system.crossing().unwrap().since(&before);
    assert_eq!(
        crossed.s2s.stanzas(),
        1,
        "only bill's join went over s2s: {crossed:?}"
    );
    let log = system.master.log();
    let destroyed = log.find("destroying slave domain=b.test").unwrap();
    assert!(log[destroyed..].contains("creating slave domain=b.test"));
}
