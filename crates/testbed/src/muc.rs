//! XEP-0045 conveniences on [`Client`]: join (collecting the whole join
//! sequence), leave, groupchat, configuration and affiliation/role changes.

use minidom::Element;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::stanza::{
    self, NS_DATA, NS_MUC, NS_MUC_ADMIN, NS_MUC_OWNER, bare, escape, has_status, is_from_room,
};

/// History limits of a join request (XEP-0045 §7.2.14).
#[derive(Debug, Clone, Default)]
pub struct HistoryLimits {
    /// `maxchars`.
    pub maxchars: Option<u32>,
    /// `maxstanzas`.
    pub maxstanzas: Option<u32>,
    /// `seconds`.
    pub seconds: Option<u32>,
    /// `since` (XEP-0082 timestamp).
    pub since: Option<String>,
}

/// Options of a join request.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// Room password.
    pub password: Option<String>,
    /// History limits; no `<history/>` element when all are `None`.
    pub history: HistoryLimits,
}

impl JoinOptions {
    /// With a password.
    pub fn password(password: &str) -> Self {
        Self {
            password: Some(password.to_owned()),
            ..Self::default()
        }
    }

    /// With history limits.
    pub fn history(history: HistoryLimits) -> Self {
        Self {
            history,
            ..Self::default()
        }
    }
}

/// The stanzas of a successful join, in the order the XEP prescribes.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Presences of the other occupants, in arrival order.
    pub occupants: Vec<Element>,
    /// The joiner's own presence (status 110).
    pub self_presence: Element,
    /// History messages, in arrival order.
    pub history: Vec<Element>,
    /// The subject message (always last).
    pub subject: Element,
}

impl Joined {
    /// Status codes of the self-presence.
    pub fn status_codes(&self) -> Vec<u16> {
        stanza::status_codes(&self.self_presence)
    }
}

/// The result of a join attempt.
#[derive(Debug, Clone)]
pub enum JoinOutcome {
    /// Entered the room.
    Joined(Joined),
    /// The room answered with an error presence.
    Refused(Element),
}

/// The `<x xmlns='…muc'>` join payload.
fn join_payload(options: &JoinOptions) -> String {
    let mut x = format!("<x xmlns='{NS_MUC}'>");
    if let Some(p) = &options.password {
        x.push_str(&format!("<password>{}</password>", escape(p)));
    }
    let h = &options.history;
    let attrs: Vec<String> = [
        ("maxchars", h.maxchars.map(|v| v.to_string())),
        ("maxstanzas", h.maxstanzas.map(|v| v.to_string())),
        ("seconds", h.seconds.map(|v| v.to_string())),
        ("since", h.since.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some(format!("{k}='{}'", escape(&v?))))
    .collect();
    if !attrs.is_empty() {
        x.push_str(&format!("<history {}/>", attrs.join(" ")));
    }
    x.push_str("</x>");
    x
}

/// `room@service/nick`.
pub fn occupant_jid(room: &str, nick: &str) -> String {
    format!("{room}/{nick}")
}

impl Client {
    /// Sends a join presence to `room/nick` and collects the join sequence
    /// (others' presences, self-presence, history, subject), or the error.
    ///
    /// Fails if the sequence is out of order: a message before the
    /// self-presence, or a presence between self-presence and subject.
    pub async fn join_with(
        &mut self,
        room: &str,
        nick: &str,
        options: &JoinOptions,
    ) -> Result<JoinOutcome> {
        self.send_raw(&format!(
            "<presence to='{}'>{}</presence>",
            escape(&occupant_jid(room, nick)),
            join_payload(options)
        ))
        .await?;
        self.collect_join(room).await
    }

    /// Collects a join sequence from `room` after a join presence was sent.
    pub async fn collect_join(&mut self, room: &str) -> Result<JoinOutcome> {
        let mut occupants = Vec::new();
        let mut self_presence = None;
        let mut history = Vec::new();
        let what = format!("join sequence from {room}");
        loop {
            let el = self.expect(&what, |el| is_from_room(el, room)).await?;
            match (&self_presence, el.name()) {
                (None, "presence") if stanza::stanza_type(&el) == "error" => {
                    return Ok(JoinOutcome::Refused(el));
                }
                (None, "presence") if has_status(&el, 110) => self_presence = Some(el),
                (None, "presence") => occupants.push(el),
                (Some(_), "message") if stanza::is_subject_message(&el) => {
                    return Ok(JoinOutcome::Joined(Joined {
                        occupants,
                        self_presence: self_presence.expect("matched Some"),
                        history,
                        subject: el,
                    }));
                }
                (Some(_), "message") => history.push(el),
                (None, _) => {
                    return Err(Error::unexpected("before the self-presence (110)", &el));
                }
                (Some(_), _) => {
                    return Err(Error::unexpected("between self-presence and subject", &el));
                }
            }
        }
    }

    /// Joins `room` as `nick`; a refusal is an error.
    pub async fn join(&mut self, room: &str, nick: &str) -> Result<Joined> {
        self.join_ok(room, nick, &JoinOptions::default()).await
    }

    /// [`Self::join_with`]; a refusal is an error.
    pub async fn join_ok(
        &mut self,
        room: &str,
        nick: &str,
        options: &JoinOptions,
    ) -> Result<Joined> {
        match self.join_with(room, nick, options).await? {
            JoinOutcome::Joined(j) => Ok(j),
            JoinOutcome::Refused(e) => Err(Error::unexpected("join refused", &e)),
        }
    }

    /// [`Self::join_with`] that must be refused; returns the error presence.
    pub async fn join_refused(
        &mut self,
        room: &str,
        nick: &str,
        options: &JoinOptions,
    ) -> Result<Element> {
        match self.join_with(room, nick, options).await? {
            JoinOutcome::Refused(e) => Ok(e),
            JoinOutcome::Joined(j) => Err(Error::unexpected("join should fail", &j.self_presence)),
        }
    }

    /// Creates `room` with `nick`: expects 201, then accepts the default
    /// configuration (instant room, XEP-0045 §10.1.2).
    pub async fn create_instant_room(&mut self, room: &str, nick: &str) -> Result<Joined> {
        let joined = self.join(room, nick).await?;
        if !has_status(&joined.self_presence, 201) {
            return Err(Error::unexpected(
                "room existed already (no 201)",
                &joined.self_presence,
            ));
        }
        self.iq_ok(
            "set",
            room,
            &format!("<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='submit'/></query>"),
        )
        .await?;
        Ok(joined)
    }

    /// Creates `room` and submits a configuration with `fields`
    /// (`(var, values)`), starting from an instant room.
    pub async fn create_room(
        &mut self,
        room: &str,
        nick: &str,
        fields: &[(&str, &[&str])],
    ) -> Result<Joined> {
        let joined = self.create_instant_room(room, nick).await?;
        if !fields.is_empty() {
            self.configure(room, fields).await?;
        }
        Ok(joined)
    }

    /// Fetches the configuration form of `room` (muc#owner get).
    pub async fn config_form(&mut self, room: &str) -> Result<Element> {
        let response = self
            .iq_ok("get", room, &format!("<query xmlns='{NS_MUC_OWNER}'/>"))
            .await?;
        stanza::find_form(&response)
            .cloned()
            .ok_or_else(|| Error::unexpected("no form in muc#owner result", &response))
    }

    /// Submits a configuration form with `fields` (`(var, values)`) and
    /// returns the IQ response (result or error).
    pub async fn configure(&mut self, room: &str, fields: &[(&str, &[&str])]) -> Result<Element> {
        let mut form = format!(
            "<x xmlns='{NS_DATA}' type='submit'><field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"
        );
        for (var, values) in fields {
            form.push_str(&format!("<field var='{}'>", escape(var)));
            for v in *values {
                form.push_str(&format!("<value>{}</value>", escape(v)));
            }
            form.push_str("</field>");
        }
        form.push_str("</x>");
        self.iq_ok(
            "set",
            room,
            &format!("<query xmlns='{NS_MUC_OWNER}'>{form}</query>"),
        )
        .await
    }

    /// Sends a muc#admin `set` with one item (`attrs` such as
    /// `[("nick", "bob"), ("role", "none")]`) and an optional reason;
    /// returns the IQ response (result or error).
    pub async fn admin_set(
        &mut self,
        room: &str,
        attrs: &[(&str, &str)],
        reason: Option<&str>,
    ) -> Result<Element> {
        let attrs: String = attrs
            .iter()
            .map(|(k, v)| format!(" {k}='{}'", escape(v)))
            .collect();
        let reason = reason.map_or(String::new(), |r| format!("<reason>{}</reason>", escape(r)));
        self.iq(
            "set",
            room,
            &format!("<query xmlns='{NS_MUC_ADMIN}'><item{attrs}>{reason}</item></query>"),
        )
        .await
    }

    /// The muc#admin items whose `key` (`affiliation` or `role`) is
    /// `value`, via muc#admin `get`; an error response is an error.
    pub async fn admin_list(&mut self, room: &str, key: &str, value: &str) -> Result<Vec<Element>> {
        let response = self
            .iq_ok(
                "get",
                room,
                &format!(
                    "<query xmlns='{NS_MUC_ADMIN}'><item {key}='{}'/></query>",
                    escape(value)
                ),
            )
            .await?;
        Ok(response
            .get_child("query", NS_MUC_ADMIN)
            .into_iter()
            .flat_map(|q| q.children())
            .filter(|c| c.is("item", NS_MUC_ADMIN))
            .cloned()
            .collect())
    }

    /// Sends a groupchat message with `body` and the given id.
    pub async fn send_groupchat_with_id(&mut self, room: &str, body: &str, id: &str) -> Result<()> {
        self.send_raw(&format!(
            "<message type='groupchat' to='{}' id='{}'><body>{}</body></message>",
            escape(room),
            escape(id),
            escape(body)
        ))
        .await
    }

    /// Sends a groupchat message with `body`; returns its id.
    pub async fn send_groupchat(&mut self, room: &str, body: &str) -> Result<String> {
        let id = self.next_id();
        self.send_groupchat_with_id(room, body, &id).await?;
        Ok(id)
    }

    /// Waits for the groupchat message with `id` from `room`.
    pub async fn expect_groupchat(&mut self, room: &str, id: &str) -> Result<Element> {
        self.expect(&format!("groupchat id={id} from {room}"), |el| {
            stanza::is_message(el)
                && stanza::stanza_type(el) == "groupchat"
                && is_from_room(el, room)
                && stanza::attr(el, "id") == id
        })
        .await
    }

    /// Waits for a groupchat message from `room` with `body`.
    pub async fn expect_groupchat_body(&mut self, room: &str, body: &str) -> Result<Element> {
        self.expect(&format!("groupchat '{body}' from {room}"), |el| {
            stanza::is_message(el)
                && stanza::stanza_type(el) == "groupchat"
                && is_from_room(el, room)
                && stanza::body(el).as_deref() == Some(body)
        })
        .await
    }

    /// Sends groupchat `body` and waits for its reflection; returns it.
    pub async fn say(&mut self, room: &str, body: &str) -> Result<Element> {
        let id = self.send_groupchat(room, body).await?;
        self.expect_groupchat(room, &id).await
    }

    /// Sets the subject of `room` and waits for its reflection; returns it.
    pub async fn set_subject(&mut self, room: &str, subject: &str) -> Result<Element> {
        self.send_raw(&format!(
            "<message type='groupchat' to='{}'><subject>{}</subject></message>",
            escape(room),
            escape(subject)
        ))
        .await?;
        self.expect("subject reflection", |el| {
            stanza::is_subject_message(el) && is_from_room(el, room)
        })
        .await
    }

    /// Waits for a presence from `room/nick` satisfying `pred`.
    pub async fn expect_presence_from(
        &mut self,
        room: &str,
        nick: &str,
        pred: impl Fn(&Element) -> bool,
    ) -> Result<Element> {
        let jid = occupant_jid(room, nick);
        self.expect(&format!("presence from {jid}"), |el| {
            stanza::is_presence(el) && stanza::from(el) == jid && pred(el)
        })
        .await
    }

    /// Leaves `room` (as `nick`) and waits for the own unavailable presence.
    pub async fn leave(&mut self, room: &str, nick: &str) -> Result<Element> {
        self.send_raw(&format!(
            "<presence type='unavailable' to='{}'/>",
            escape(&occupant_jid(room, nick))
        ))
        .await?;
        self.expect_presence_from(room, nick, |el| stanza::stanza_type(el) == "unavailable")
            .await
    }
}

/// `true` if `el` is an occupant presence of `room`, ignoring status.
pub fn is_occupant_presence(el: &Element, room: &str) -> bool {
    stanza::is_presence(el)
        && bare(stanza::from(el)) == room
        && stanza::resource(stanza::from(el)).is_some()
}
