//! The scripted conversation of the local demo (`scripts/demo`, binary
//! `dmuc-demo`): users of three domains meet in a room of the whole dmuc
//! system (the master on `a.test`, a peerhost on `b.test` and on `c.test`).
//! Everything shown is read from stanzas the clients actually received, or
//! from the relays that count what crosses between domains.
//!
//! [`run_script`] plays it against a running, counted [`Distributed`]
//! system ([`TestbedOptions::counted`](crate::TestbedOptions::counted)) and
//! returns a [`Conversation`]: the [`Transcript`] (the printed lines, and
//! the facts a test asserts on) and the clients still in the room. It fails
//! as soon as an expected stanza does not arrive within the client timeout
//! ([`crate::DEFAULT_TIMEOUT`]) or contradicts XEP-0045/0359/0421.
//!
//! The script, in room [`ROOM`]`@`[`DMUC_SERVICE`]:
//!
//! 1. `alice@a.test` creates the room, configures it (name [`ROOM_NAME`],
//!    persistent), sets the subject and says hello.
//! 2. `bob@b.test` looks the room up (disco#info) and joins: the other
//!    occupants, his own presence (110), history, subject, in order. Then
//!    `carol@c.test`, then `dave@b.test`.
//! 3. bob, carol, dave and alice each say something; every occupant gets
//!    each message with one stanza-id (XEP-0359), the same for everyone,
//!    and the sender's occupant-id (XEP-0421).
//! 4. carol (c.test) sends bob (b.test) a private message through the room.
//! 5. bob becomes robert (303); his occupant-id stays the same.
//! 6. Split mode: [`SPLIT`]'s gRPC link to the master (its relay) is cut;
//!    bob and dave get the room's notice that it is split, nobody leaves.
//!    robert and dave talk (each sees the other), so do alice and carol.
//!    The link heals: bob and dave get the "whole again" notice and alice's
//!    and carol's split-era messages, alice and carol get robert's and
//!    dave's, delayed, with the stanza-ids robert and dave saw. alice
//!    welcomes b.test back; every client gets this last event after the
//!    earlier ones, from the same source, so then nobody may hold a second
//!    copy of a message, nor anyone but bob the private message, nor have
//!    seen anyone leave. Last, a new joiner on a.test (served by the
//!    master) and one on b.test (by its slave) get the same history
//!    ([`LATECOMERS`]).
//!
//! Around each step the script reads the relays ([`Crossed`]): s2s stanzas
//! into each domain's server, gRPC bytes to and from the peerhosts. A join
//! from another domain shows whether the room's stanzas crossed s2s or
//! were served by the joiner's domain's slave ([`Crossed::room_stanzas_s2s`]).
//! The peerhosts intercept ([`peerhost_setup`]): their users' stanzas for
//! the room go up the peerhost's gRPC link, not over s2s. The heal shows
//! the gRPC bytes of the merge beside what a classic MUC would have done.
//! The transcript ends with a table of what crossed per step, beside what a
//! classic MUC would have sent over s2s for the same messages
//! ([`classic_s2s`]: computed from the occupants, not measured).

use std::time::Duration;

use minidom::Element;

use crate::client::{Client, ClientOptions};
use crate::distributed::{Crossing, Distributed, PeerhostSetup, peerhost_jid};
use crate::error::{Error, Result};
use crate::muc::{Joined, occupant_jid};
use crate::relay::Relay;
use crate::scenarios::{DMUC_SERVICE, check, check_eq, check_status};
use crate::stanza::{
    self, NS_DISCO_INFO, affiliation_role, body, delay, disco_features, escape, has_status,
    is_message, is_presence, muc_item, muc_user, occupant_id, stanza_ids, stanza_type,
};

/// The local part of the demo room's JID.
pub const ROOM: &str = "lounge";
/// The room's configured name.
pub const ROOM_NAME: &str = "Lounge";
/// The subject alice sets.
pub const SUBJECT: &str = "Welcome! a.test, b.test and c.test meet here";
/// The master's domain.
pub const HOME: &str = "a.test";
/// The domains with a peerhost.
pub const PEER_DOMAINS: [&str; 2] = ["b.test", "c.test"];
/// The domain the last act splits off.
pub const SPLIT: &str = "b.test";
/// The new joiners whose history the last act compares: one served by
/// the master, one by [`SPLIT`]'s slave.
pub const LATECOMERS: [(&str, &str); 2] = [("erin", HOME), ("frank", SPLIT)];
/// The resource every scripted client binds.
const RESOURCE: &str = "demo";
/// How long the master may take to get each peerhost's stream up.
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);
/// The relays' counters must stay still this long before a step is
/// measured: acknowledgements come a little after the stanzas clients await.
const QUIET: Duration = Duration::from_millis(150);
/// At most this many [`QUIET`] periods are waited for.
const QUIET_ROUNDS: usize = 20;
/// How long the heal may take: the peerhost dials the master again with
/// backoff, at most 10 s apart.
const HEAL_TIMEOUT: Duration = Duration::from_secs(30);

/// The cast: name and domain, in order of appearance.
const CAST: [(&str, &str); 4] = [
    ("alice", "a.test"),
    ("bob", "b.test"),
    ("carol", "c.test"),
    ("dave", "b.test"),
];
const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;
const DAVE: usize = 3;

/// How the demo's peerhosts run (`base` says the rest): they dial the
/// master and their servers hand them their users' stanzas for the room
/// (interception), so that b.test can be split off and merged back.
pub fn peerhost_setup(base: PeerhostSetup) -> PeerhostSetup {
    PeerhostSetup {
        intercept: true,
        ..base
    }
}

/// What crossed between domains, measured by the relays: cumulative
/// counters, or the difference of two (see [`Crossed::since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crossed {
    /// s2s (stanzas, bytes) and gRPC (bytes), each way.
    pub total: Crossing,
    /// The s2s stanzas into each domain's server, in testbed order.
    pub s2s_into: Vec<(String, u64)>,
}

impl Crossed {
    /// Reads the relays of `system`.
    pub fn read(system: &Distributed) -> Result<Crossed> {
        let testbed = &system.testbed;
        let s2s_into = testbed
            .domains()
            .map(|d| Ok((d.to_owned(), testbed.s2s_traffic(d)?.stanzas_in)))
            .collect::<Result<_>>()?;
        Ok(Crossed {
            total: system.crossing()?,
            s2s_into,
        })
    }

    /// What crossed since `earlier` (of the same system).
    pub fn since(&self, earlier: &Crossed) -> Crossed {
        Crossed {
            total: self.total.since(&earlier.total),
            s2s_into: self
                .s2s_into
                .iter()
                .map(|(d, n)| (d.clone(), n - earlier.s2s_into(d)))
                .collect(),
        }
    }

    /// s2s stanzas, both ways.
    pub fn s2s_stanzas(&self) -> u64 {
        self.total.s2s.stanzas()
    }

    /// gRPC bytes, both ways (TLS included).
    pub fn grpc_bytes(&self) -> u64 {
        self.total.grpc.bytes()
    }

    /// s2s stanzas into `domain`'s server.
    pub fn s2s_into(&self, domain: &str) -> u64 {
        self.s2s_into
            .iter()
            .find(|(d, _)| d == domain)
            .map_or(0, |(_, n)| *n)
    }

    /// During a join from another domain: the answers to the master's
    /// questions, i.e. what crossed into [`HOME`] besides the joiner's
    /// presence (the master asking the joiner's domain for its peerhost,
    /// by disco, the first time someone of it joins).
    pub fn lookups(&self) -> u64 {
        self.s2s_into(HOME).saturating_sub(1)
    }

    /// During a join from another domain: the room's stanzas that crossed
    /// s2s into the other domains. What crossed into them is the room's
    /// stanzas and the master's questions, each of which got one answer
    /// into [`HOME`] ([`Self::lookups`]).
    pub fn room_stanzas_s2s(&self) -> u64 {
        let into_others: u64 = self
            .s2s_into
            .iter()
            .filter(|(d, _)| d != HOME)
            .map(|(_, n)| n)
            .sum();
        into_others.saturating_sub(self.lookups())
    }
}

/// The s2s stanzas a classic MUC service of [`HOME`] needs for one
/// groupchat message from `sender` to `occupants` (bare JIDs, the sender
/// included): the message itself if the sender is of another domain, and
/// one copy to each occupant of another domain.
pub fn classic_s2s(sender: &str, occupants: &[&str]) -> u64 {
    let remote = |jid: &str| domain_of(jid) != HOME;
    let copies = occupants.iter().filter(|o| remote(o)).count() as u64;
    copies + u64::from(remote(sender))
}

/// The domain of a JID string.
fn domain_of(jid: &str) -> &str {
    let bare = stanza::bare(jid);
    bare.split_once('@').map_or(bare, |(_, d)| d)
}

/// One step of a join sequence, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinStep {
    /// Another occupant's presence (its nick).
    Occupant(String),
    /// The joiner's own presence, with its status codes.
    SelfPresence(Vec<u16>),
    /// A history message: its body and stanza-id.
    History {
        /// The body.
        body: String,
        /// The stanza-id by the room.
        stanza_id: String,
    },
    /// The subject message (its text, empty if none is set).
    Subject(String),
}

/// A join, as the joiner saw it.
#[derive(Debug, Clone)]
pub struct JoinSeen {
    /// The joiner's bare JID.
    pub user: String,
    /// The nick joined with.
    pub nick: String,
    /// The join sequence in arrival order.
    pub steps: Vec<JoinStep>,
    /// The occupant-id of the joiner's own presence.
    pub occupant_id: String,
    /// What crossed between domains from the join presence until every
    /// occupant had seen the newcomer.
    pub crossed: Crossed,
}

/// One copy of a groupchat message, as one occupant received it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The recipient's bare JID.
    pub recipient: String,
    /// The `from` of the copy (the sender's occupant JID).
    pub from: String,
    /// The stanza-id by the room.
    pub stanza_id: String,
    /// The sender's occupant-id.
    pub occupant_id: String,
}

/// A groupchat message and every copy of it.
#[derive(Debug, Clone)]
pub struct MessageSeen {
    /// The sender's bare JID.
    pub sender: String,
    /// The body, as received.
    pub body: String,
    /// The occupants (bare JIDs) when it was sent, the sender first.
    pub occupants: Vec<String>,
    /// One entry per copy received, the sender's (its reflection) first.
    pub deliveries: Vec<Delivery>,
    /// What crossed between domains until every occupant had it.
    pub crossed: Crossed,
    /// The s2s stanzas a classic MUC would have needed ([`classic_s2s`]);
    /// none for a message of a split, which a classic MUC cannot have.
    pub classic_s2s: Option<u64>,
}

impl MessageSeen {
    /// `true` if every recipient got the same stanza-id.
    pub fn same_stanza_id_everywhere(&self) -> bool {
        self.deliveries
            .windows(2)
            .all(|w| w[0].stanza_id == w[1].stanza_id)
    }

    /// The bare JIDs of the recipients.
    pub fn recipients(&self) -> Vec<&str> {
        self.deliveries
            .iter()
            .map(|d| d.recipient.as_str())
            .collect()
    }
}

/// A private message, as received.
#[derive(Debug, Clone)]
pub struct PrivateSeen {
    /// The sender's bare JID.
    pub sender: String,
    /// The recipient's bare JID.
    pub recipient: String,
    /// The `from` of the message (the sender's occupant JID).
    pub from: String,
    /// The body.
    pub body: String,
    /// The clients (bare JIDs) holding a copy it should not have: anyone
    /// but the recipient, or the recipient a second time. Checked at the
    /// end of the script.
    pub leaked_to: Vec<String>,
    /// What crossed between domains until the recipient had it.
    pub crossed: Crossed,
}

/// A nick change, as the occupants saw it.
#[derive(Debug, Clone)]
pub struct NickChangeSeen {
    /// The old nick.
    pub old: String,
    /// The new nick, from the 303 item.
    pub new: String,
    /// The occupants (bare JIDs) that saw the 303 unavailable presence
    /// followed by the new nick's presence.
    pub seen_by: Vec<String>,
    /// The occupant-id of the new nick's presence, as each saw it.
    pub occupant_ids: Vec<String>,
    /// What crossed between domains until every occupant had seen it.
    pub crossed: Crossed,
}

/// A room notice (a message from the room itself, no nick), as one
/// occupant got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The recipient's bare JID.
    pub recipient: String,
    /// Its text.
    pub text: String,
}

/// A message of the other side of a split, as one occupant got it when
/// the room was whole again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaughtUp {
    /// The recipient's bare JID.
    pub recipient: String,
    /// The body.
    pub body: String,
    /// The stanza-id by the room.
    pub stanza_id: String,
    /// The delay's stamp (XEP-0203), if delayed.
    pub delay: Option<String>,
}

/// The history a new joiner got: (body, stanza-id), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySeen {
    /// The joiner's bare JID.
    pub joiner: String,
    /// The history messages.
    pub messages: Vec<(String, String)>,
}

/// The last act: [`SPLIT`]'s link to the master is cut, both sides talk
/// on, the link heals, and the room is whole again.
#[derive(Debug, Clone, Default)]
pub struct SplitSeen {
    /// The domain split off.
    pub domain: String,
    /// What crossed from the cut until its users had been told.
    pub cut_crossed: Crossed,
    /// The room's notices of the split, to the domain's occupants.
    pub split_notices: Vec<Notice>,
    /// What was said during the split, each side among itself.
    pub messages: Vec<MessageSeen>,
    /// The room's notices that it is whole again.
    pub whole_notices: Vec<Notice>,
    /// What each occupant got of the other side's split-era messages at
    /// the heal, in arrival order.
    pub caught_up: Vec<CaughtUp>,
    /// What crossed from the heal until every occupant had caught up.
    pub heal_crossed: Crossed,
    /// Occupants seen leaving (`recipient: presence`) from the cut to the
    /// end of the script; none, if the split kept everyone in the room.
    pub left: Vec<String>,
    /// The history new joiners on [`HOME`] and on the domain got.
    pub histories: Vec<HistorySeen>,
}

/// One row of the crossing table.
#[derive(Debug, Clone)]
pub struct Step {
    /// What happened, e.g. `bob@b.test joins`.
    pub what: String,
    /// What crossed meanwhile.
    pub crossed: Crossed,
    /// For a message: what a classic MUC would have sent over s2s.
    pub classic_s2s: Option<u64>,
}

/// What the script printed and the facts it established.
#[derive(Debug, Clone, Default)]
pub struct Transcript {
    /// The room's JID.
    pub room: String,
    /// Every printed line.
    pub lines: Vec<String>,
    /// The room's name in disco#info, as a remote user saw it.
    pub room_name: String,
    /// `true` if the room's disco#info lists `muc_persistent`.
    pub persistent: bool,
    /// The subject, as reflected to alice.
    pub subject: String,
    /// The joins, in script order (alice's creation first).
    pub joins: Vec<JoinSeen>,
    /// The groupchat messages, in script order.
    pub messages: Vec<MessageSeen>,
    /// The private messages.
    pub private_messages: Vec<PrivateSeen>,
    /// The nick changes.
    pub nick_changes: Vec<NickChangeSeen>,
    /// Second copies of groupchat messages found at the end of the script
    /// (`recipient: body`); none, if the service works.
    pub duplicates: Vec<String>,
    /// The last act, the split and the heal.
    pub split: SplitSeen,
    /// The measured steps, in script order.
    pub steps: Vec<Step>,
    /// What crossed between domains from the start of the script to its
    /// end, the steps and whatever happened between them (the joiners'
    /// disco#info of the room, the latecomers' joins).
    pub whole: Crossed,
    echo: bool,
}

impl Transcript {
    /// The join of `user` (bare JID).
    pub fn join_of(&self, user: &str) -> Option<&JoinSeen> {
        self.joins.iter().find(|j| j.user == user)
    }

    fn print(&mut self, line: String) {
        if self.echo {
            println!("{line}");
        }
        self.lines.push(line);
    }

    fn section(&mut self, title: &str) {
        self.print(String::new());
        let rule = 76usize.saturating_sub(title.chars().count() + 4);
        self.print(format!("── {title} {}", "─".repeat(rule)));
    }

    /// Prints the table of what crossed between domains.
    fn crossing_table(&mut self) {
        self.section("what crossed between domains");
        let header = format!(
            "  {:<38} {:>11} {:>11} {:>13}",
            "", "s2s stanzas", "gRPC bytes", "classic MUC*"
        );
        self.print(header);
        let row = |what: &str, s2s: u64, grpc: u64, classic: Option<u64>| {
            let classic = classic.map_or(String::new(), |c| c.to_string());
            format!("  {what:<38} {s2s:>11} {grpc:>11} {classic:>13}")
                .trim_end()
                .to_owned()
        };
        let rows: Vec<String> = self
            .steps
            .iter()
            .map(|s| {
                row(
                    &s.what,
                    s.crossed.s2s_stanzas(),
                    s.crossed.grpc_bytes(),
                    s.classic_s2s,
                )
            })
            .collect();
        for r in rows {
            self.print(r);
        }
        let messages = &self.messages;
        let total = row(
            &format!("the {} messages", messages.len()),
            messages.iter().map(|m| m.crossed.s2s_stanzas()).sum(),
            messages.iter().map(|m| m.crossed.grpc_bytes()).sum(),
            Some(messages.iter().filter_map(|m| m.classic_s2s).sum()),
        );
        let whole = row(
            "the whole script, everything included",
            self.whole.s2s_stanzas(),
            self.whole.grpc_bytes(),
            None,
        );
        self.print(format!("  {}", "─".repeat(76)));
        self.print(total);
        self.print(whole);
        for note in [
            "",
            "  Measured by relays in front of each server's s2s port and on each",
            "  peerhost's gRPC link to the master: stanzas, and bytes both ways (TLS",
            "  included: gRPC carries the room's events to the slaves and their",
            "  acknowledgements, and the stanzas of b.test's and c.test's users, which",
            "  their servers hand to their peerhosts instead of sending them over s2s).",
            "  * Computed, not measured: a classic MUC on a.test sends each message over",
            "  s2s to every occupant of another domain, and gets it over s2s from a",
            "  sender of another domain.",
        ] {
            self.print(note.to_owned());
        }
    }
}

/// The result of [`run_script`].
#[derive(Debug)]
pub struct Conversation {
    /// What happened.
    pub transcript: Transcript,
    /// The clients still in the room (alice, robert, carol, dave), to keep
    /// the room populated; alice first.
    pub clients: Vec<Client>,
}

/// A member of the cast.
#[derive(Debug)]
struct Person {
    name: &'static str,
    domain: &'static str,
    client: Client,
    nick: String,
    occupant_id: String,
    in_room: bool,
}

/// The script's state.
#[derive(Debug)]
struct Script<'a> {
    system: &'a Distributed,
    room: String,
    people: Vec<Person>,
    t: Transcript,
    /// The relays' counters at the start of the current step.
    mark: Crossed,
    /// The domain split off from the master, during the split.
    split: Option<&'static str>,
}

/// Plays the demo conversation in room [`ROOM`]`@`[`DMUC_SERVICE`] of
/// `system` with `alice@a.test`, `bob@b.test`, `carol@c.test` and
/// `dave@b.test` (resource `demo`); prints each line to stdout as it
/// happens when `echo`. The system must count what crosses between
/// domains ([`Distributed::crossing`]).
pub async fn run_script(system: &Distributed, echo: bool) -> Result<Conversation> {
    let mut people = Vec::new();
    for (name, domain) in CAST {
        let options = ClientOptions {
            resource: Some(RESOURCE.into()),
            ..ClientOptions::default()
        };
        people.push(Person {
            name,
            domain,
            client: system.testbed.client_with(domain, name, options).await?,
            nick: name.to_owned(),
            occupant_id: String::new(),
            in_room: false,
        });
    }
    let room = format!("{ROOM}@{DMUC_SERVICE}");
    let mut s = Script {
        system,
        t: Transcript {
            room: room.clone(),
            echo,
            ..Transcript::default()
        },
        room,
        people,
        mark: Crossed::default(),
        split: None,
    };
    s.streams_up().await?;
    let start = s.settled().await?;

    s.create().await?;
    s.say(
        ALICE,
        "Hi! This room lives on dmuc, the MUC service of a.test.",
    )
    .await?;
    s.join(BOB).await?;
    s.join(CAROL).await?;
    s.join(DAVE).await?;
    s.t.section("a conversation across three domains");
    s.say(BOB, "Hello from b.test!").await?;
    s.say(CAROL, "Hi all, carol from c.test here.").await?;
    s.say(DAVE, "dave, from b.test as well.").await?;
    s.say(ALICE, "Welcome, all three! One room, three domains.")
        .await?;
    s.private(CAROL, BOB, "psst bob, this one is just for you")
        .await?;
    s.change_nick(BOB, "robert").await?;
    s.cut(SPLIT).await?;
    s.t.section("during the split, each side talks among itself");
    s.say_split(BOB, "The room says b.test is split off. Still there, dave?")
        .await?;
    s.say_split(DAVE, "Yes, we can still talk to each other.")
        .await?;
    s.say_split(ALICE, "b.test went quiet, carol.").await?;
    s.say_split(CAROL, "Nobody left, though: they will catch up.")
        .await?;
    s.heal().await?;
    s.say(ALICE, "Welcome back, b.test!").await?;
    s.final_checks()?;
    s.same_history_everywhere().await?;
    s.t.whole = s.settled().await?.since(&start);
    s.t.crossing_table();

    let Script { people, t, .. } = s;
    let clients = people
        .into_iter()
        .filter(|p| p.in_room)
        .map(|p| p.client)
        .collect();
    Ok(Conversation {
        transcript: t,
        clients,
    })
}

/// `n one` or `n many`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

impl Script<'_> {
    fn bare(&self, who: usize) -> String {
        self.people[who].client.bare_jid().to_owned()
    }

    /// Prints `who arrow text`, aligned.
    fn line(&mut self, who: usize, arrow: &str, text: String) {
        let name = self.people[who].name;
        self.t.print(format!("  {name:<6} {arrow} {text}"));
    }

    /// Prints a detail line under the previous one.
    fn detail(&mut self, text: String) {
        self.t.print(format!("           {text}"));
    }

    /// Prints a remark about the system (`⇄` what crossed, `✓` what that
    /// shows), wrapped at 78 columns.
    fn note(&mut self, text: String) {
        let mut line = String::from(" ");
        for word in text.split(' ') {
            if line.chars().count() + 1 + word.chars().count() > 78 && line.len() > 6 {
                self.t.print(std::mem::replace(&mut line, "    ".into()));
            }
            line.push(' ');
            line.push_str(word);
        }
        self.t.print(line);
    }

    /// `s2s n`, and how `what`, sent by `who` (of another domain) to the
    /// room, reached a.test: the one stanza over s2s, or nothing over s2s
    /// because its server handed it to its peerhost (interception).
    fn s2s_of(&self, who: usize, c: &Crossed, what: &str) -> String {
        let domain = self.people[who].domain;
        match c.s2s_stanzas() {
            0 if domain != HOME => format!("s2s 0 ({what} went up {domain}'s gRPC link)"),
            1 if domain != HOME && c.s2s_into(HOME) == 1 => format!("s2s 1 ({what}, to a.test)"),
            n => format!("s2s {n}"),
        }
    }

    /// The people in the room: `first`, then the others in cast order.
    fn present_from(&self, first: usize) -> Vec<usize> {
        std::iter::once(first)
            .chain((0..self.people.len()).filter(|&i| i != first))
            .filter(|&i| self.people[i].in_room)
            .collect()
    }

    /// The people in the room on `who`'s side of the split (everyone in
    /// the room if there is none): `who`, then the others in cast order.
    fn side_of(&self, who: usize) -> Vec<usize> {
        let cut_off = |i: usize| Some(self.people[i].domain) == self.split;
        self.present_from(who)
            .into_iter()
            .filter(|&i| cut_off(i) == cut_off(who))
            .collect()
    }

    /// The names of `people`, as a list.
    fn names(&self, people: &[usize]) -> String {
        let names: Vec<String> = people
            .iter()
            .map(|&i| self.people[i].name.to_owned())
            .collect();
        and_list(&names)
    }

    /// The occupant JID of `nick` shortened to `lounge/nick`.
    fn short(&self, jid: &str) -> String {
        match stanza::resource(jid) {
            Some(nick) => format!("{ROOM}/{nick}"),
            None => jid.to_owned(),
        }
    }

    /// The relays' counters once they have been still for [`QUIET`].
    async fn settled(&self) -> Result<Crossed> {
        let mut last = Crossed::read(self.system)?;
        for _ in 0..QUIET_ROUNDS {
            tokio::time::sleep(QUIET).await;
            let now = Crossed::read(self.system)?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }

    /// A measured step begins.
    async fn begin(&mut self) -> Result<()> {
        self.mark = self.settled().await?;
        Ok(())
    }

    /// What crossed since the step began.
    async fn measured(&mut self) -> Result<Crossed> {
        let now = self.settled().await?;
        let crossed = now.since(&self.mark);
        self.mark = now;
        Ok(crossed)
    }

    /// Waits until each peerhost has dialled the master and its stream is
    /// up (the master logs it at `info`): until then, its domain's users'
    /// stanzas for the room have nowhere to go.
    async fn streams_up(&self) -> Result<()> {
        for domain in PEER_DOMAINS {
            let domain = format!("domain={domain}");
            self.system
                .master
                .wait_for_log_line(&["peerhost stream up", &domain], STREAM_TIMEOUT)
                .await?;
        }
        Ok(())
    }

    /// How often the master logged creating a slave on `domain` (0 if its
    /// log filter hides it).
    fn slaves_created(&self, domain: &str) -> usize {
        let needle = format!("creating slave domain={domain}");
        self.system.master.log().matches(&needle).count()
    }

    /// alice creates and configures the room, and sets the subject.
    async fn create(&mut self) -> Result<()> {
        let room = self.room.clone();
        self.t.section(&format!("alice@a.test creates {room}"));
        self.line(ALICE, "→", format!("join {ROOM} as \"alice\""));
        let joined = self.people[ALICE].client.join(&room, "alice").await?;
        check_status(&joined.self_presence, &[110, 201])?;
        self.show_join(ALICE, "alice", &joined)?;

        let form = self.people[ALICE].client.config_form(&room).await?;
        let fields = stanza::form_vars(&form).len();
        self.line(
            ALICE,
            "←",
            format!("configuration form: {fields} fields (the room stays locked until submitted)"),
        );
        self.line(
            ALICE,
            "→",
            format!("submit: name \"{ROOM_NAME}\", persistent"),
        );
        let result = self.people[ALICE]
            .client
            .configure(
                &room,
                &[
                    ("muc#roomconfig_roomname", &[ROOM_NAME]),
                    ("muc#roomconfig_persistentroom", &["1"]),
                ],
            )
            .await?;
        check_eq(stanza_type(&result), "result", "configuration submit")?;
        self.line(
            ALICE,
            "←",
            "iq result: the room is configured and open".into(),
        );

        let reflected = self.people[ALICE]
            .client
            .set_subject(&room, SUBJECT)
            .await?;
        let subject = stanza::child_text(&reflected, "subject").unwrap_or_default();
        check_eq(subject.as_str(), SUBJECT, "reflected subject")?;
        let from = self.short(stanza::from(&reflected));
        self.line(ALICE, "←", format!("subject \"{subject}\" from {from}"));
        self.t.subject = subject;
        Ok(())
    }

    /// `who` (of another domain) looks the room up and joins it; the others
    /// see the new occupant. Shows what crossed, and who served the join.
    async fn join(&mut self, who: usize) -> Result<()> {
        let room = self.room.clone();
        let nick = self.people[who].nick.clone();
        let bare = self.bare(who);
        let domain = self.people[who].domain;
        self.t.section(&format!("{bare} joins"));
        let info = self.people[who]
            .client
            .iq_ok("get", &room, &format!("<query xmlns='{NS_DISCO_INFO}'/>"))
            .await?;
        let name = info
            .get_child("query", NS_DISCO_INFO)
            .into_iter()
            .flat_map(Element::children)
            .find(|c| c.is("identity", NS_DISCO_INFO))
            .map(|i| stanza::attr(i, "name").to_owned())
            .unwrap_or_default();
        let persistent = disco_features(&info).iter().any(|f| f == "muc_persistent");
        self.line(
            who,
            "←",
            format!(
                "disco#info: \"{name}\", {}",
                if persistent {
                    "persistent"
                } else {
                    "temporary"
                }
            ),
        );
        self.t.room_name = name;
        self.t.persistent = persistent;

        self.begin().await?;
        let created_before = self.slaves_created(domain);
        self.line(
            who,
            "→",
            format!("join {ROOM} as \"{nick}\"; the room answers, in order:"),
        );
        let joined = self.people[who].client.join(&room, &nick).await?;
        check_status(&joined.self_presence, &[110])?;
        self.show_join(who, &nick, &joined)?;

        for other in self.present_from(who).into_iter().skip(1) {
            let p = self.people[other]
                .client
                .expect_presence_from(&room, &nick, |p| stanza_type(p).is_empty())
                .await?;
            let (aff, role) = affiliation_role(&p);
            let real = muc_item(&p)
                .and_then(|i| i.attr("jid"))
                .map_or(String::new(), |j| format!(" · real JID {j}"));
            let id = occupant_id(&p).unwrap_or("none").to_owned();
            self.line(
                other,
                "←",
                format!("presence: {nick} joined · {aff}/{role}{real} · occupant-id {id}"),
            );
        }
        let crossed = self.measured().await?;
        let created = self.slaves_created(domain) > created_before;
        self.show_join_crossing(who, &crossed, created);
        if let Some(seen) = self.t.joins.last_mut() {
            seen.crossed = crossed.clone();
        }
        self.t.steps.push(Step {
            what: format!("{bare} joins"),
            crossed,
            classic_s2s: None,
        });
        Ok(())
    }

    /// What crossed during `who`'s join, and what that shows.
    fn show_join_crossing(&mut self, who: usize, c: &Crossed, created: bool) {
        let name = self.people[who].name;
        let domain = self.people[who].domain;
        let lookups = c.lookups();
        let room_s2s = c.room_stanzas_s2s();
        let presence = if c.s2s_into(HOME) > lookups {
            format!("{name}'s presence")
        } else {
            format!("{name}'s presence went up {domain}'s gRPC link")
        };
        let mut s2s = format!("⇄ s2s {}: {presence}", c.s2s_stanzas());
        if lookups > 0 {
            s2s.push_str(&format!(
                "; the master looking for {domain}'s peerhost by disco ({}, {})",
                count(lookups, "query", "queries"),
                count(lookups, "answer", "answers")
            ));
        }
        if room_s2s > 0 {
            s2s.push_str(&format!(
                "; {} of the room",
                count(room_s2s, "stanza", "stanzas")
            ));
        }
        self.note(s2s);
        let mut grpc = format!("⇄ gRPC {} bytes", c.grpc_bytes());
        if created {
            grpc.push_str(&format!(
                ": the master created a slave of the room at {}",
                peerhost_jid(domain)
            ));
        }
        self.note(grpc);
        if room_s2s > 0 {
            self.note(format!(
                "✗ {} of the room crossed s2s into other domains: no slave served them",
                count(room_s2s, "stanza", "stanzas")
            ));
            return;
        }
        let others = |d: &str| -> Vec<String> {
            self.people
                .iter()
                .enumerate()
                .filter(|&(i, p)| i != who && p.in_room && p.domain == d)
                .map(|(_, p)| p.nick.clone())
                .collect()
        };
        let mut served =
            format!("{domain}'s slave served {name}'s join (roster, history, subject)");
        let neighbours = others(domain);
        if !neighbours.is_empty() {
            served.push_str(&format!(" and told {}", and_list(&neighbours)));
        }
        let mut parts = vec![served];
        for d in PEER_DOMAINS.into_iter().filter(|d| *d != domain) {
            let told = others(d);
            if !told.is_empty() {
                parts.push(format!("{d}'s slave told {}", and_list(&told)));
            }
        }
        self.note(format!("✓ {}: none of it crossed s2s", parts.join(", ")));
    }

    /// Prints and records the join sequence `who` received.
    fn show_join(&mut self, who: usize, nick: &str, joined: &Joined) -> Result<()> {
        let mut steps = Vec::new();
        let mut n = 0;
        let mut step = |s: &mut Self, text: String| {
            n += 1;
            s.line(who, "←", format!("{n}. {text}"));
        };
        for p in &joined.occupants {
            let other = stanza::resource(stanza::from(p)).unwrap_or("").to_owned();
            let (aff, role) = affiliation_role(p);
            let id = occupant_id(p).unwrap_or("none");
            step(
                self,
                format!("presence  {other:<7} {aff}/{role} · occupant-id {id}"),
            );
            steps.push(JoinStep::Occupant(other));
        }
        let me = &joined.self_presence;
        let codes = stanza::status_codes(me);
        let (aff, role) = affiliation_role(me);
        let own_id = occupant_id(me)
            .ok_or_else(|| Error::Check(format!("no occupant-id: {}", stanza::show(me))))?
            .to_owned();
        let meaning: Vec<&str> = codes
            .iter()
            .filter_map(|c| match c {
                110 => Some("110 = this is you"),
                201 => Some("201 = new room"),
                100 => Some("100 = JIDs visible"),
                _ => None,
            })
            .collect();
        step(
            self,
            format!(
                "presence  {nick:<7} {aff}/{role} · status {codes:?} ({}) · occupant-id {own_id}",
                meaning.join(", ")
            ),
        );
        steps.push(JoinStep::SelfPresence(codes));
        for m in &joined.history {
            let from = stanza::resource(stanza::from(m)).unwrap_or("").to_owned();
            let text = body(m).unwrap_or_default();
            let stanza_id = stanza_ids(m, &self.room)
                .first()
                .copied()
                .unwrap_or("")
                .to_owned();
            let stamp = delay(m).map_or("no delay", |d| stanza::attr(d, "stamp"));
            step(self, format!("history   <{from}> {text}"));
            self.detail(format!("     delay {stamp} · stanza-id {stanza_id}"));
            steps.push(JoinStep::History {
                body: text,
                stanza_id,
            });
        }
        let subject = stanza::child_text(&joined.subject, "subject").unwrap_or_default();
        let shown = if subject.is_empty() {
            "(none yet)".to_owned()
        } else {
            format!("\"{subject}\"")
        };
        step(self, format!("subject   {shown}"));
        steps.push(JoinStep::Subject(subject));

        let person = &mut self.people[who];
        person.in_room = true;
        person.occupant_id = own_id.clone();
        self.t.joins.push(JoinSeen {
            user: person.client.bare_jid().to_owned(),
            nick: nick.to_owned(),
            steps,
            occupant_id: own_id,
            crossed: Crossed::default(),
        });
        Ok(())
    }

    /// `who` says `text` to the whole room: every occupant must get it
    /// with the same stanza-id and `who`'s occupant-id.
    async fn say(&mut self, who: usize, text: &str) -> Result<()> {
        let present = self.present_from(who);
        let mut seen = self.said(who, &present, text).await?;
        let occupants: Vec<&str> = seen.occupants.iter().map(String::as_str).collect();
        let classic = classic_s2s(&seen.sender, &occupants);
        seen.classic_s2s = Some(classic);
        let s2s = self.s2s_of(who, &seen.crossed, "the message");
        self.detail(format!(
            "⇄ {s2s} · gRPC {} bytes · a classic MUC: s2s {classic}",
            seen.crossed.grpc_bytes()
        ));
        let alone = if seen.occupants.len() == 1 {
            " (alone)"
        } else {
            ""
        };
        self.t.steps.push(Step {
            what: format!("{}'s message{alone}", seen.sender),
            crossed: seen.crossed.clone(),
            classic_s2s: Some(classic),
        });
        self.t.messages.push(seen);
        Ok(())
    }

    /// A measured step: `who` says `text`, and each of `to` (`who` first)
    /// must get it with one stanza-id, the same for all, and `who`'s
    /// occupant-id. Prints the message, its ids and who got it.
    async fn said(&mut self, who: usize, to: &[usize], text: &str) -> Result<MessageSeen> {
        let room = self.room.clone();
        self.begin().await?;
        let id = self.people[who].client.send_groupchat(&room, text).await?;
        let mut deliveries = Vec::new();
        let mut first = None;
        for &i in to {
            let p = &mut self.people[i];
            let m = p.client.expect_groupchat(&room, &id).await?;
            let ids = stanza_ids(&m, &room);
            check_eq(&ids.len(), &1, "stanza-ids by the room")?;
            deliveries.push(Delivery {
                recipient: p.client.bare_jid().to_owned(),
                from: stanza::from(&m).to_owned(),
                stanza_id: ids[0].to_owned(),
                occupant_id: occupant_id(&m).unwrap_or("").to_owned(),
            });
            first.get_or_insert(m);
        }
        let crossed = self.measured().await?;
        let m = first.expect("the sender is in the room");
        let seen = MessageSeen {
            sender: self.bare(who),
            body: body(&m).unwrap_or_default(),
            occupants: to.iter().map(|&i| self.bare(i)).collect(),
            deliveries,
            crossed,
            classic_s2s: None,
        };
        let nick = stanza::resource(stanza::from(&m)).unwrap_or("");
        self.t.print(format!("  <{nick}> {}", seen.body));
        let d = &seen.deliveries[0];
        let mut recipients: Vec<&str> = seen
            .recipients()
            .iter()
            .map(|r| r.split('@').next().unwrap_or(r))
            .collect();
        let reflection = format!("{} (reflection)", recipients[0]);
        recipients[0] = &reflection;
        self.detail(format!(
            "stanza-id {} · occupant-id {} · the same at {}",
            d.stanza_id,
            d.occupant_id,
            recipients.join(", ")
        ));
        check(seen.same_stanza_id_everywhere(), || {
            format!("recipients got different stanza-ids: {:?}", seen.deliveries)
        })?;
        let own = &self.people[who].occupant_id;
        check(
            seen.deliveries.iter().all(|d| &d.occupant_id == own),
            || {
                format!(
                    "occupant-id of {} is not {own}: {:?}",
                    seen.sender, seen.deliveries
                )
            },
        )?;
        Ok(seen)
    }

    /// `from` sends `to` a private message through the room (nobody else
    /// may get it: checked in [`Self::final_checks`]).
    async fn private(&mut self, from: usize, to: usize, text: &str) -> Result<()> {
        let room = self.room.clone();
        let to_nick = self.people[to].nick.clone();
        let from_nick = self.people[from].nick.clone();
        self.t.section(&format!(
            "a private message, {} → {}",
            self.people[from].domain, self.people[to].domain
        ));
        self.begin().await?;
        self.line(
            from,
            "→",
            format!("chat to {ROOM}/{to_nick} (the room relays it, hiding the JIDs)"),
        );
        let id = self.people[from].client.next_id();
        self.people[from]
            .client
            .send_raw(&format!(
                "<message type='chat' to='{}' id='{id}'><body>{}</body></message>",
                escape(&occupant_jid(&room, &to_nick)),
                escape(text)
            ))
            .await?;
        let pm = self.people[to]
            .client
            .expect("private message", |el| {
                is_message(el) && stanza::attr(el, "id") == id
            })
            .await?;
        let crossed = self.measured().await?;
        check_eq(stanza_type(&pm), "chat", "private message type")?;
        check_eq(
            stanza::from(&pm),
            occupant_jid(&room, &from_nick).as_str(),
            "private message from",
        )?;
        check(muc_user(&pm).is_some(), || {
            format!("private message without muc#user x: {}", stanza::show(&pm))
        })?;
        let seen_from = self.short(stanza::from(&pm));
        let pm_body = body(&pm).unwrap_or_default();
        self.line(
            to,
            "←",
            format!("chat from {seen_from} (with muc#user <x/>): \"{pm_body}\""),
        );
        let to_domain = self.people[to].domain;
        let s2s = self.s2s_of(from, &crossed, "the message");
        self.note(format!("⇄ {s2s} · gRPC {} bytes", crossed.grpc_bytes()));
        if to_domain != HOME && crossed.s2s_into(to_domain) == 0 {
            self.note(format!(
                "✓ nothing crossed s2s into {to_domain}: {to_domain}'s slave delivered it to {to_nick}"
            ));
        }
        self.t.steps.push(Step {
            what: format!("private message {from_nick} → {to_nick}"),
            crossed: crossed.clone(),
            classic_s2s: None,
        });
        self.t.private_messages.push(PrivateSeen {
            sender: self.bare(from),
            recipient: self.bare(to),
            from: stanza::from(&pm).to_owned(),
            body: pm_body,
            leaked_to: Vec::new(),
            crossed,
        });
        Ok(())
    }

    /// `who` changes nick to `new`: everyone sees 303 from the old nick,
    /// then the new nick's presence, with the same occupant-id as before.
    async fn change_nick(&mut self, who: usize, new: &str) -> Result<()> {
        let room = self.room.clone();
        let old = self.people[who].nick.clone();
        self.t.section(&format!("{old} changes nick to {new}"));
        self.begin().await?;
        self.line(who, "→", format!("presence to {ROOM}/{new}"));
        self.people[who]
            .client
            .send_raw(&format!(
                "<presence to='{}'/>",
                escape(&occupant_jid(&room, new))
            ))
            .await?;
        let mut seen_by = Vec::new();
        let mut occupant_ids = Vec::new();
        for i in self.present_from(who) {
            let client = &mut self.people[i].client;
            let gone = client
                .expect_presence_from(&room, &old, |p| stanza_type(p) == "unavailable")
                .await?;
            check_status(&gone, &[303])?;
            let announced = muc_item(&gone)
                .and_then(|item| item.attr("nick"))
                .unwrap_or("")
                .to_owned();
            check_eq(announced.as_str(), new, "new nick in the 303 item")?;
            let back = client
                .expect("presence of the new nick", |el| {
                    is_presence(el) && stanza::is_from_room(el, &room)
                })
                .await?;
            check_eq(
                stanza::from(&back),
                occupant_jid(&room, new).as_str(),
                "new nick presence",
            )?;
            seen_by.push(client.bare_jid().to_owned());
            let own = if has_status(&back, 110) {
                " (110: you)"
            } else {
                ""
            };
            let id = occupant_id(&back).unwrap_or("none").to_owned();
            let same = if id == self.people[who].occupant_id {
                ", unchanged"
            } else {
                ", changed!"
            };
            self.line(
                i,
                "←",
                format!(
                    "unavailable from {ROOM}/{old} · status {:?} · new nick \"{announced}\"",
                    stanza::status_codes(&gone)
                ),
            );
            self.detail(format!(
                "then presence from {ROOM}/{new}{own} · occupant-id {id}{same}"
            ));
            occupant_ids.push(id);
        }
        let crossed = self.measured().await?;
        let s2s = self.s2s_of(who, &crossed, &format!("{old}'s presence"));
        self.note(format!("⇄ {s2s} · gRPC {} bytes", crossed.grpc_bytes()));
        self.people[who].nick = new.to_owned();
        self.t.steps.push(Step {
            what: format!("{old} becomes {new}"),
            crossed: crossed.clone(),
            classic_s2s: None,
        });
        self.t.nick_changes.push(NickChangeSeen {
            old,
            new: new.to_owned(),
            seen_by,
            occupant_ids,
            crossed,
        });
        Ok(())
    }

    /// The uplink relay of `domain`'s peerhost (the testbed counts, and the
    /// peerhosts dial in).
    fn uplink(&self, domain: &str) -> Result<&Relay> {
        self.system
            .peerhosts
            .iter()
            .find(|p| p.domain == domain)
            .and_then(|p| p.uplink_relay.as_ref())
            .ok_or_else(|| Error::Check(format!("{domain}'s peerhost has no uplink relay")))
    }

    /// `domain`'s peerhost's links to the other peerhosts (its parents in
    /// rooms' trees).
    fn peer_links(&self, domain: &str) -> Vec<&Relay> {
        self.system
            .peerhosts
            .iter()
            .filter(|p| p.domain == domain)
            .flat_map(|p| p.links.iter().map(|(_, link)| link))
            .collect()
    }

    /// The next room notice `who` gets must contain `says`; prints it.
    async fn notice(&mut self, who: usize, says: &str) -> Result<Notice> {
        let room = self.room.clone();
        let el = self.people[who]
            .client
            .expect_within(says, HEAL_TIMEOUT, |el| {
                is_message(el) && stanza_type(el) == "groupchat" && stanza::from(el) == room
            })
            .await?;
        let text = body(&el).unwrap_or_default();
        check(text.contains(says), || {
            format!(
                "the notice to {} does not say {says:?}: {text}",
                self.bare(who)
            )
        })?;
        self.line(who, "←", format!("notice from {ROOM}: \"{text}\""));
        Ok(Notice {
            recipient: self.bare(who),
            text,
        })
    }

    /// `domain`'s link to the master is cut: its occupants are told that
    /// the room is split, and nobody leaves.
    async fn cut(&mut self, domain: &'static str) -> Result<()> {
        self.t.section(&format!("{domain} is split off"));
        self.begin().await?;
        self.note(format!(
            "✂ {domain}'s gRPC link to the master is cut: its relay drops the stream \
             and refuses new ones"
        ));
        self.uplink(domain)?.cut();
        // And its links to the other peerhosts: else its slave goes on
        // through another's (a detour), and nothing splits.
        for link in self.peer_links(domain) {
            link.cut();
        }
        self.split = Some(domain);
        // The master holds the room's events for the slave from now on
        // (after trying the detour: once an event goes unacknowledged).
        self.system
            .master
            .wait_for_log_line(
                &["peerhost stream down", &format!("domain={domain}")],
                HEAL_TIMEOUT,
            )
            .await?;
        let cut_off: Vec<usize> = (0..self.people.len())
            .filter(|&i| self.people[i].in_room && self.people[i].domain == domain)
            .collect();
        let mut notices = Vec::new();
        for &i in &cut_off {
            notices.push(self.notice(i, "split from its master").await?);
        }
        let crossed = self.measured().await?;
        let others: Vec<usize> = (0..self.people.len())
            .filter(|i| !cut_off.contains(i) && self.people[*i].in_room)
            .collect();
        self.note(format!(
            "✓ {domain}'s slave told {} itself; {} see nobody leave: the master keeps \
             {domain}'s occupants, and holds the room's events for its slave",
            self.names(&cut_off),
            self.names(&others)
        ));
        self.t.steps.push(Step {
            what: format!("{domain}'s link cut"),
            crossed: crossed.clone(),
            classic_s2s: None,
        });
        self.t.split = SplitSeen {
            domain: domain.to_owned(),
            cut_crossed: crossed,
            split_notices: notices,
            ..SplitSeen::default()
        };
        Ok(())
    }

    /// During the split, `who` says `text`: the people on `who`'s side get
    /// it, the others do not (yet).
    async fn say_split(&mut self, who: usize, text: &str) -> Result<()> {
        let side = self.side_of(who);
        let seen = self.said(who, &side, text).await?;
        let c = &seen.crossed;
        let domain = self.people[who].domain;
        let served = if Some(domain) == self.split {
            format!("{domain}'s slave, split, served it alone")
        } else {
            let split = self.split.unwrap_or_default();
            format!("the master holds it for {split}'s slave")
        };
        self.detail(format!(
            "⇄ s2s {} · gRPC {} bytes: {served}",
            c.s2s_stanzas(),
            c.grpc_bytes()
        ));
        self.t.steps.push(Step {
            what: format!("{}'s message (split)", seen.sender),
            crossed: seen.crossed.clone(),
            classic_s2s: None,
        });
        self.t.split.messages.push(seen);
        Ok(())
    }

    /// The link heals: the split domain's occupants are told the room is
    /// whole again, and everyone gets what the other side said meanwhile,
    /// in order, with the stanza-ids its authors saw.
    async fn heal(&mut self) -> Result<()> {
        let room = self.room.clone();
        let domain = self.split.unwrap_or_default();
        self.t
            .section(&format!("{domain}'s link heals: the room is whole again"));
        self.begin().await?;
        self.note(format!(
            "⚭ {domain}'s gRPC link is back: its peerhost dials the master again"
        ));
        for link in self.peer_links(domain) {
            link.heal();
        }
        self.uplink(domain)?.heal();
        let cut_off: Vec<usize> = (0..self.people.len())
            .filter(|&i| self.people[i].in_room && self.people[i].domain == domain)
            .collect();
        for &i in &cut_off {
            let notice = self.notice(i, "whole again").await?;
            self.t.split.whole_notices.push(notice);
        }
        let said: Vec<(bool, String, String)> = self
            .t
            .split
            .messages
            .iter()
            .map(|m| {
                let from_split = domain_of(&m.sender) == domain;
                (
                    from_split,
                    m.body.clone(),
                    m.deliveries[0].stanza_id.clone(),
                )
            })
            .collect();
        let present = self.present_from(ALICE);
        for &i in &present {
            let on_split = self.people[i].domain == domain;
            for (from_split, text, id) in said.iter().filter(|m| m.0 != on_split) {
                let m = self.people[i]
                    .client
                    .expect_within("a split-era message", HEAL_TIMEOUT, |el| {
                        is_message(el)
                            && stanza_type(el) == "groupchat"
                            && stanza::is_from_room(el, &room)
                            && stanza::resource(stanza::from(el)).is_some()
                    })
                    .await?;
                let got = body(&m).unwrap_or_default();
                check_eq(got.as_str(), text.as_str(), "the next split-era message")?;
                let ids = stanza_ids(&m, &room);
                check_eq(&ids, &vec![id.as_str()], "the stanza-id its author saw")?;
                let stamp = delay(&m).map(|d| stanza::attr(d, "stamp").to_owned());
                let nick = stanza::resource(stanza::from(&m)).unwrap_or("").to_owned();
                let when = match &stamp {
                    Some(s) => format!("delayed {s}"),
                    None => "no delay".to_owned(),
                };
                self.line(i, "←", format!("<{nick}> {got}"));
                self.detail(format!("{when} · stanza-id {id}, as its author saw it"));
                if *from_split {
                    check(stamp.is_some(), || {
                        format!("a merged message without a delay: {}", stanza::show(&m))
                    })?;
                }
                self.t.split.caught_up.push(CaughtUp {
                    recipient: self.bare(i),
                    body: got,
                    stanza_id: id.clone(),
                    delay: stamp,
                });
            }
        }
        self.split = None;
        let crossed = self.measured().await?;
        let merged = said.iter().filter(|m| m.0).count() as u64;
        let held = said.len() as u64 - merged;
        self.note(format!(
            "⇄ s2s {} · gRPC {} bytes (a new TLS stream included): {domain}'s peerhost \
             submitted the split's {}, the master merged them (their stanza-ids and \
             times kept, delayed for the others) and sent {domain}'s slave the {} it \
             had held",
            crossed.s2s_stanzas(),
            crossed.grpc_bytes(),
            count(merged, "message", "messages"),
            count(held, "message", "messages"),
        ));
        self.note(format!(
            "✗ a classic MUC on {HOME}, its s2s link to {domain} cut, would have kicked {} \
             (status 333) or silently lost what was said meanwhile: no chat among \
             themselves, and nobody would have got the other side's messages",
            self.names(&cut_off)
        ));
        self.t.steps.push(Step {
            what: format!("{domain}'s link heals (the merge)"),
            crossed: crossed.clone(),
            classic_s2s: None,
        });
        self.t.split.heal_crossed = crossed;
        Ok(())
    }

    /// A new joiner on [`HOME`] (served by the master) and one on the split
    /// domain (served by its slave) get the same history, the split's
    /// messages in it; then they leave.
    async fn same_history_everywhere(&mut self) -> Result<()> {
        let room = self.room.clone();
        self.t.section("every replica has the same history");
        let mut seen: Vec<HistorySeen> = Vec::new();
        for (name, domain) in LATECOMERS {
            let options = ClientOptions {
                resource: Some(RESOURCE.into()),
                ..ClientOptions::default()
            };
            let mut client = self
                .system
                .testbed
                .client_with(domain, name, options)
                .await?;
            let joined = client.join(&room, name).await?;
            let messages: Vec<(String, String)> = joined
                .history
                .iter()
                .map(|m| {
                    let id = stanza_ids(m, &room).first().copied().unwrap_or("");
                    (body(m).unwrap_or_default(), id.to_owned())
                })
                .collect();
            client.leave(&room, name).await?;
            let served = if domain == HOME {
                "the master".to_owned()
            } else {
                format!("{domain}'s slave")
            };
            let line = format!(
                "  {name:<6} ← joins on {domain}, {served} serves {}",
                count(messages.len() as u64, "history message", "history messages")
            );
            self.t.print(line);
            match seen.first() {
                None => {
                    for (text, id) in &messages {
                        self.detail(format!("{id:<34} {text}"));
                    }
                }
                Some(first) => {
                    let same = if first.messages == messages {
                        "the same, in the same order, with the same stanza-ids".to_owned()
                    } else {
                        "different!".to_owned()
                    };
                    self.detail(format!("{same} as {}", first.joiner));
                }
            }
            seen.push(HistorySeen {
                joiner: client.bare_jid().to_owned(),
                messages,
            });
        }
        let split_ids = self
            .t
            .split
            .messages
            .iter()
            .map(|m| &m.deliveries[0].stanza_id);
        let all_there = split_ids
            .clone()
            .all(|id| seen[0].messages.iter().any(|(_, h)| h == id));
        let same = seen.windows(2).all(|w| w[0].messages == w[1].messages);
        self.t.split.histories = seen;
        check(same && all_there, || {
            format!(
                "the replicas' histories differ: {:?}",
                self.t.split.histories
            )
        })?;
        self.note(
            "✓ the master and b.test's slave keep the same history, the split's messages \
             in it with the stanza-ids their authors saw"
                .to_owned(),
        );
        Ok(())
    }

    /// After the last event, which every client received after the earlier
    /// ones through the same path: nobody holds a second copy of a message,
    /// and only its recipient holds the private message, once.
    fn final_checks(&mut self) -> Result<()> {
        let room = self.room.clone();
        let ids: Vec<(String, String)> = self
            .t
            .messages
            .iter()
            .chain(&self.t.split.messages)
            .map(|m| (m.deliveries[0].stanza_id.clone(), m.body.clone()))
            .collect();
        let mut duplicates = Vec::new();
        for p in self.people.iter().filter(|p| p.in_room) {
            for (id, text) in &ids {
                let copy = |el: &Element| {
                    is_message(el)
                        && stanza_type(el) == "groupchat"
                        && stanza_ids(el, &room).contains(&id.as_str())
                };
                if p.client.expect_none_pending("a second copy", copy).is_err() {
                    duplicates.push(format!("{}: {text}", p.client.bare_jid()));
                }
            }
        }
        for pm in &mut self.t.private_messages {
            for p in self.people.iter().filter(|p| p.in_room) {
                let copy = |el: &Element| {
                    is_message(el)
                        && stanza_type(el) == "chat"
                        && stanza::from(el) == pm.from
                        && body(el).as_deref() == Some(pm.body.as_str())
                };
                if p.client
                    .expect_none_pending("the private message", copy)
                    .is_err()
                {
                    pm.leaked_to.push(p.client.bare_jid().to_owned());
                }
            }
        }
        let leaks: Vec<String> = self
            .t
            .private_messages
            .iter()
            .flat_map(|pm| pm.leaked_to.clone())
            .collect();
        let mut left = Vec::new();
        for p in self.people.iter().filter(|p| p.in_room) {
            let leaving = |el: &Element| {
                is_presence(el)
                    && stanza::is_from_room(el, &room)
                    && stanza_type(el) == "unavailable"
            };
            if p.client
                .expect_none_pending("someone leaving", leaving)
                .is_err()
            {
                left.push(p.client.bare_jid().to_owned());
            }
        }
        self.t.split.left = left.clone();
        check(left.is_empty(), || {
            format!("these saw someone leave: {left:?}")
        })?;
        self.t.duplicates = duplicates.clone();
        check(duplicates.is_empty(), || {
            format!("second copies of messages: {duplicates:?}")
        })?;
        check(leaks.is_empty(), || {
            format!("the private message went also to {leaks:?}")
        })?;
        let recipient = self
            .t
            .private_messages
            .first()
            .map_or(String::new(), |pm| pm.recipient.clone());
        let name = recipient.split('@').next().unwrap_or("").to_owned();
        self.note(format!(
            "✓ after this last event nobody holds a second copy of any message, \
             nobody but {name} the private message, and nobody saw anyone leave"
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn into(counts: &[(&str, u64)]) -> Crossed {
        Crossed {
            total: Crossing::default(),
            s2s_into: counts.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect(),
        }
    }

    #[test]
    fn a_classic_muc_sends_one_copy_per_remote_occupant() {
        let occupants = ["alice@a.test", "bob@b.test", "carol@c.test", "dave@b.test"];
        assert_eq!(classic_s2s("alice@a.test", &occupants), 3);
        // The remote sender's own stanza, and its reflection.
        assert_eq!(classic_s2s("bob@b.test/demo", &occupants), 4);
        assert_eq!(classic_s2s("alice@a.test", &["alice@a.test"]), 0);
    }

    #[test]
    fn a_join_tells_lookups_from_room_stanzas() {
        // First joiner of b.test: presence + 2 disco answers into a.test,
        // 2 disco queries into b.test.
        let first = into(&[("a.test", 3), ("b.test", 2), ("c.test", 0)]);
        assert_eq!((first.lookups(), first.room_stanzas_s2s()), (2, 0));
        // Served directly: the roster, history and subject cross s2s, and
        // the news of the join to carol.
        let direct = into(&[("a.test", 1), ("b.test", 4), ("c.test", 1)]);
        assert_eq!((direct.lookups(), direct.room_stanzas_s2s()), (0, 5));
    }

    #[test]
    fn crossed_since_subtracts_per_domain() {
        let before = into(&[("a.test", 3), ("b.test", 2)]);
        let after = into(&[("a.test", 5), ("b.test", 2)]);
        assert_eq!(
            after.since(&before).s2s_into,
            into(&[("a.test", 2), ("b.test", 0)]).s2s_into
        );
    }

    #[test]
    fn lists_read_as_english() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(and_list(&names(&["bob"])), "bob");
        assert_eq!(and_list(&names(&["bob", "dave"])), "bob and dave");
        assert_eq!(and_list(&names(&["a", "b", "c"])), "a, b and c");
        assert_eq!(count(1, "query", "queries"), "1 query");
        assert_eq!(count(2, "query", "queries"), "2 queries");
    }
}
