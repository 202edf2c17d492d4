//! The scripted conversation of the local demo (`scripts/demo`, binary
//! `dmuc-demo`): users of two domains meet in a room of the MUC service,
//! and everything shown is read from stanzas the clients actually received.
//!
//! [`run_script`] plays it against a running [`Testbed`] and returns a
//! [`Conversation`]: the [`Transcript`] (the printed lines, and the facts a
//! test asserts on) and the clients still in the room. It fails as soon as
//! an expected stanza does not arrive within the client timeout
//! ([`crate::DEFAULT_TIMEOUT`]) or contradicts XEP-0045/0359/0421.
//!
//! The script, in room [`ROOM`]`@<service>`:
//!
//! 1. `alice@a.test` creates the room, configures it (name [`ROOM_NAME`],
//!    persistent), sets the subject and says hello.
//! 2. `bob@b.test` looks the room up (disco#info) and joins over s2s: the
//!    other occupants, his own presence (110), history, subject, in order.
//!    He answers.
//! 3. `carol@b.test` joins the same way; a few messages go round, each
//!    reflected to every occupant with one stanza-id (XEP-0359), the same
//!    for everyone, and the sender's occupant-id (XEP-0421).
//! 4. carol sends alice a private message; bob does not get it.
//! 5. bob becomes robert (303); his occupant-id stays the same.
//! 6. carol leaves.

use minidom::Element;

use crate::client::{Client, ClientOptions};
use crate::error::{Error, Result};
use crate::muc::{Joined, occupant_jid};
use crate::prosody::Testbed;
use crate::scenarios::{check, check_eq, check_status};
use crate::stanza::{
    self, NS_DISCO_INFO, affiliation_role, body, delay, disco_features, escape, has_status,
    is_message, is_presence, muc_item, muc_user, occupant_id, stanza_ids, stanza_type,
};

/// The local part of the demo room's JID.
pub const ROOM: &str = "lounge";
/// The room's configured name.
pub const ROOM_NAME: &str = "Lounge";
/// The subject alice sets.
pub const SUBJECT: &str = "Welcome! a.test and b.test meet here";
/// The resource every scripted client binds.
const RESOURCE: &str = "demo";

/// Indices into the cast.
const ALICE: usize = 0;
const BOB: usize = 1;
const CAROL: usize = 2;

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
    /// One entry per occupant, the sender (its reflection) first.
    pub deliveries: Vec<Delivery>,
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
    /// The recipient's bare JID.
    pub recipient: String,
    /// The `from` of the message (the sender's occupant JID).
    pub from: String,
    /// The body.
    pub body: String,
    /// The other occupants (bare JIDs) that received it too (none, if the
    /// service works).
    pub leaked_to: Vec<String>,
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
}

/// A departure, as the occupants saw it.
#[derive(Debug, Clone)]
pub struct DepartureSeen {
    /// The nick that left.
    pub nick: String,
    /// The occupants (bare JIDs) that saw its unavailable presence, the
    /// leaver (status 110) first.
    pub seen_by: Vec<String>,
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
    /// The departures.
    pub departures: Vec<DepartureSeen>,
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
        let rule = 72usize.saturating_sub(title.chars().count() + 4);
        self.print(format!("── {title} {}", "─".repeat(rule)));
    }
}

/// The result of [`run_script`].
#[derive(Debug)]
pub struct Conversation {
    /// What happened.
    pub transcript: Transcript,
    /// The clients still in the room (alice, and bob as robert), to keep
    /// the room populated.
    pub clients: Vec<Client>,
}

/// A member of the cast.
#[derive(Debug)]
struct Person {
    name: &'static str,
    client: Client,
    nick: String,
    occupant_id: String,
    in_room: bool,
}

/// The script's state.
#[derive(Debug)]
struct Script {
    room: String,
    people: Vec<Person>,
    t: Transcript,
}

/// Plays the demo conversation in room [`ROOM`]`@service` with
/// `alice@a.test`, `bob@b.test` and `carol@b.test` (resource `demo`);
/// prints each line to stdout as it happens when `echo`.
pub async fn run_script(testbed: &Testbed, service: &str, echo: bool) -> Result<Conversation> {
    let mut cast = Vec::new();
    for (name, domain) in [("alice", "a.test"), ("bob", "b.test"), ("carol", "b.test")] {
        let options = ClientOptions {
            resource: Some(RESOURCE.into()),
            ..ClientOptions::default()
        };
        cast.push(Person {
            name,
            client: testbed.client_with(domain, name, options).await?,
            nick: name.to_owned(),
            occupant_id: String::new(),
            in_room: false,
        });
    }
    let room = format!("{ROOM}@{service}");
    let mut s = Script {
        t: Transcript {
            room: room.clone(),
            echo,
            ..Transcript::default()
        },
        room,
        people: cast,
    };

    s.create().await?;
    s.say(
        ALICE,
        "Hi! This room lives on dmuc, the MUC service of a.test.",
    )
    .await?;
    s.join(BOB).await?;
    s.say(BOB, "Hello from b.test! I came in over s2s.").await?;
    s.join(CAROL).await?;
    s.t.section("a conversation across domains");
    s.say(CAROL, "Hi both, carol from b.test here too.").await?;
    s.say(
        ALICE,
        "Welcome carol! Every message passes through the room once.",
    )
    .await?;
    s.say(BOB, "...and all of us get it with the same stanza-id.")
        .await?;
    s.private(CAROL, ALICE, "psst alice, this one is just for you")
        .await?;
    s.change_nick(BOB, "robert").await?;
    s.say(BOB, "Call me robert now; my occupant-id did not change.")
        .await?;
    s.leave(CAROL).await?;

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

impl Script {
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

    /// The people in the room: `first`, then the others in cast order.
    fn present_from(&self, first: usize) -> Vec<usize> {
        std::iter::once(first)
            .chain((0..self.people.len()).filter(|&i| i != first))
            .filter(|&i| self.people[i].in_room)
            .collect()
    }

    /// The occupant JID of `nick` shortened to `lounge/nick`.
    fn short(&self, jid: &str) -> String {
        match stanza::resource(jid) {
            Some(nick) => format!("{ROOM}/{nick}"),
            None => jid.to_owned(),
        }
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

    /// `who` (of b.test) looks the room up and joins it over s2s; the
    /// others see the new occupant.
    async fn join(&mut self, who: usize) -> Result<()> {
        let room = self.room.clone();
        let nick = self.people[who].nick.clone();
        let bare = self.bare(who);
        self.t
            .section(&format!("{bare} joins over s2s (b.test → a.test)"));
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
        Ok(())
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
        });
        Ok(())
    }

    /// `who` says `text`; every occupant must get it with the same
    /// stanza-id and `who`'s occupant-id.
    async fn say(&mut self, who: usize, text: &str) -> Result<()> {
        let room = self.room.clone();
        let id = self.people[who].client.send_groupchat(&room, text).await?;
        let mut deliveries = Vec::new();
        let mut first = None;
        for i in self.present_from(who) {
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
        let m = first.expect("the sender is in the room");
        let seen = MessageSeen {
            sender: self.bare(who),
            body: body(&m).unwrap_or_default(),
            deliveries,
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
        self.t.messages.push(seen);
        Ok(())
    }

    /// `from` sends `to` a private message through the room; nobody else
    /// may get it.
    async fn private(&mut self, from: usize, to: usize, text: &str) -> Result<()> {
        let room = self.room.clone();
        let to_nick = self.people[to].nick.clone();
        let from_nick = self.people[from].nick.clone();
        self.t.section("a private message");
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
        let is_it = |el: &Element| is_message(el) && stanza::attr(el, "id") == id;
        let pm = self.people[to]
            .client
            .expect("private message", is_it)
            .await?;
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
        let mut leaked_to = Vec::new();
        for other in self.present_from(from) {
            if other == from || other == to {
                continue;
            }
            let client = &mut self.people[other].client;
            client.barrier(&room).await?;
            if client
                .expect_none_pending("the private message", is_it)
                .is_err()
            {
                leaked_to.push(client.bare_jid().to_owned());
            } else {
                self.line(
                    other,
                    "✓",
                    "did not get it (checked after a round trip to the room)".into(),
                );
            }
        }
        let seen = PrivateSeen {
            recipient: self.bare(to),
            from: stanza::from(&pm).to_owned(),
            body: pm_body,
            leaked_to,
        };
        check(seen.leaked_to.is_empty(), || {
            format!("private message leaked to {:?}", seen.leaked_to)
        })?;
        self.t.private_messages.push(seen);
        Ok(())
    }

    /// `who` changes nick to `new`: everyone sees 303 from the old nick,
    /// then the new nick's presence.
    async fn change_nick(&mut self, who: usize, new: &str) -> Result<()> {
        let room = self.room.clone();
        let old = self.people[who].nick.clone();
        self.t.section(&format!("{old} changes nick to {new}"));
        self.line(who, "→", format!("presence to {ROOM}/{new}"));
        self.people[who]
            .client
            .send_raw(&format!(
                "<presence to='{}'/>",
                escape(&occupant_jid(&room, new))
            ))
            .await?;
        let mut seen_by = Vec::new();
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
            self.line(
                i,
                "←",
                format!(
                    "unavailable from {ROOM}/{old} · status {:?} · new nick \"{announced}\"",
                    stanza::status_codes(&gone)
                ),
            );
            self.detail(format!(
                "then presence from {ROOM}/{new}{own} · occupant-id {id}"
            ));
        }
        self.people[who].nick = new.to_owned();
        self.t.nick_changes.push(NickChangeSeen {
            old,
            new: new.to_owned(),
            seen_by,
        });
        Ok(())
    }

    /// `who` leaves; everyone sees the unavailable presence.
    async fn leave(&mut self, who: usize) -> Result<()> {
        let room = self.room.clone();
        let nick = self.people[who].nick.clone();
        self.t.section(&format!("{nick} leaves"));
        self.line(who, "→", "presence type=unavailable".into());
        let own = self.people[who].client.leave(&room, &nick).await?;
        check_status(&own, &[110])?;
        self.line(
            who,
            "←",
            format!(
                "own unavailable presence, status {:?}",
                stanza::status_codes(&own)
            ),
        );
        let mut seen_by = vec![self.bare(who)];
        for other in self.present_from(who).into_iter().skip(1) {
            let client = &mut self.people[other].client;
            client
                .expect_presence_from(&room, &nick, |p| stanza_type(p) == "unavailable")
                .await?;
            seen_by.push(client.bare_jid().to_owned());
            self.line(
                other,
                "←",
                format!("unavailable from {ROOM}/{nick}: {nick} left"),
            );
        }
        self.people[who].in_room = false;
        self.t.departures.push(DepartureSeen { nick, seen_by });
        Ok(())
    }
}
