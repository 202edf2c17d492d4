//! The outbound edge: a room's [`Outgoing`] becomes a stanza. Built once per
//! action and stamped with each recipient's JID.

use chrono::{DateTime, SecondsFormat, Utc};
use dmuc_room::event::{IqKind, IqResponse, ListItem, MessageKind, OccupantPresence, StanzaKind};
use dmuc_room::form::{FieldKind, Form};
use dmuc_room::{Condition, ErrorType, Nick, Outgoing, RoomMessage, Timestamp};
use jid::{BareJid, FullJid, Jid};
use minidom::rxml::{Namespace, NcName};
use minidom::{Element, ElementBuilder, IntoAttributeValue};
use xmpp_parsers::data_forms::{DataForm, DataFormType, Field, FieldType, Option_};
use xmpp_parsers::ns;

use crate::inbound::MUC_ADMIN;

/// Sets attributes by static name on an element under construction.
pub trait Attr {
    fn a(self, name: &'static str, value: impl IntoAttributeValue) -> Self;
}

impl Attr for ElementBuilder {
    fn a(self, name: &'static str, value: impl IntoAttributeValue) -> Self {
        self.attr(ncname(name), value)
    }
}

/// Sets (or replaces) an attribute of a built element.
pub fn set_attr(el: &mut Element, name: &'static str, value: impl IntoAttributeValue) {
    el.set_attr(Namespace::NONE, ncname(name), value);
}

fn ncname(name: &'static str) -> NcName {
    NcName::try_from(name).expect("attribute names in this crate are valid NCNames")
}

/// XEP-0033 Extended Stanza Addressing.
pub const NS_ADDRESS: &str = "http://jabber.org/protocol/address";

/// The namespace of stanzas on a component stream.
const NS: &str = ns::DEFAULT_NS;

/// Builds the stanza for `out`, from `room` (or one of its occupants),
/// without a `to`: the caller stamps each recipient.
pub fn build(room: &BareJid, out: &Outgoing) -> Element {
    match out {
        Outgoing::Presence(p) => presence(room, p),
        Outgoing::Groupchat(m) => groupchat(room, m, false),
        // A merged message was sent before: like history, it carries its time.
        Outgoing::History(m) | Outgoing::Merged(m) => groupchat(room, m, true),
        Outgoing::Subject { subject, delayed } => {
            let (from, text) = match subject {
                Some(s) => (from_attr(room, s.nick.as_ref()), s.text.as_str()),
                None => (room.to_string(), ""),
            };
            let mut b = Element::builder("message", NS)
                .a("type", "groupchat")
                .a("from", from)
                .a("id", subject_id(subject.as_ref().map(|s| s.at)))
                .append(Element::builder("subject", NS).append(text));
            if let (true, Some(s)) = (delayed, subject) {
                b = b.append(delay(room, s.at));
            }
            b.build()
        }
        Outgoing::Status(codes) => Element::builder("message", NS)
            .a("type", "groupchat")
            .a("from", room.to_string())
            .append(muc_user(codes, None))
            .build(),
        // A groupchat message from the room itself (its bare JID) with a
        // body: clients show it as a message from the room.
        Outgoing::Notice { text } => Element::builder("message", NS)
            .a("type", "groupchat")
            .a("from", room.to_string())
            .append(Element::builder("body", NS).append(text.as_str()))
            .build(),
        Outgoing::Private {
            from,
            occupant_id,
            id,
            kind,
            payload,
        } => Element::builder("message", NS)
            .a("type", message_type(*kind))
            .a("from", from_attr(room, Some(from)))
            .a("id", id.clone())
            .append_all(payload.elements().iter().cloned())
            .append(Element::builder("x", ns::MUC_USER))
            .append(occupant_id_el(occupant_id.as_str()))
            .build(),
        Outgoing::Iq {
            from,
            id,
            kind,
            payload,
        } => Element::builder("iq", NS)
            .a(
                "type",
                match kind {
                    IqKind::Get => "get",
                    IqKind::Set => "set",
                    IqKind::Result => "result",
                    IqKind::Error => "error",
                },
            )
            .a("from", from_attr(room, Some(from)))
            .a("id", id.as_str())
            .append_all(payload.elements().iter().cloned())
            .build(),
        Outgoing::IqResult { from, id, body } => Element::builder("iq", NS)
            .a("type", "result")
            .a("from", from_attr(room, from.as_ref()))
            .a("id", id.clone())
            .append_all(iq_body(body))
            .build(),
        Outgoing::Error {
            kind,
            from,
            id,
            condition,
            error_type,
            text,
        } => Element::builder(kind_name(*kind), NS)
            .a("type", "error")
            .a("from", from_attr(room, from.as_ref()))
            .a("id", id.clone())
            .append(error_element(*condition, *error_type, *text, Some(room)))
            .build(),
    }
}

/// The error answer to a stanza we cannot or will not process; `None` for
/// errors (never answer an error) and stanzas without a sender.
pub fn error_reply(el: &Element, condition: Condition, text: Option<&str>) -> Option<Element> {
    if el.attr("type") == Some("error") {
        return None;
    }
    let from = el.attr("from")?;
    let by = el
        .attr("to")
        .and_then(|t| t.parse::<Jid>().ok())
        .map(|j| j.to_bare());
    let mut reply = Element::builder(el.name(), NS)
        .a("type", "error")
        .a("to", from)
        .a("from", el.attr("to"))
        .a("id", el.attr("id"))
        .build();
    reply.append_child(error_element(
        condition,
        condition.error_type(),
        text,
        by.as_ref(),
    ));
    Some(reply)
}

fn error_element(
    condition: Condition,
    error_type: ErrorType,
    text: Option<&str>,
    by: Option<&BareJid>,
) -> Element {
    let mut e = Element::builder("error", NS)
        .a(
            "type",
            match error_type {
                ErrorType::Auth => "auth",
                ErrorType::Cancel => "cancel",
                ErrorType::Modify => "modify",
                ErrorType::Wait => "wait",
            },
        )
        .a("by", by.map(|b| b.to_string()))
        .append(Element::builder(condition.as_str(), ns::XMPP_STANZAS));
    if let Some(text) = text {
        e = e.append(Element::builder("text", ns::XMPP_STANZAS).append(text));
    }
    e.build()
}

fn presence(room: &BareJid, p: &OccupantPresence) -> Element {
    let mut item = Element::builder("item", ns::MUC_USER)
        .a("affiliation", p.affiliation.as_str())
        .a("role", p.role.as_str())
        .a("jid", p.jid.as_ref().map(|j| j.to_string()))
        .a("nick", p.new_nick.as_ref().map(|n| n.to_string()));
    if let Some(reason) = &p.reason {
        item = item.append(Element::builder("reason", ns::MUC_USER).append(reason.as_str()));
    }
    let mut x = Element::builder("x", ns::MUC_USER).append(item);
    if let Some(d) = &p.destroy {
        let mut destroy = Element::builder("destroy", ns::MUC_USER)
            .a("jid", d.alternate.as_ref().map(|j| j.to_string()));
        if let Some(reason) = &d.reason {
            destroy =
                destroy.append(Element::builder("reason", ns::MUC_USER).append(reason.as_str()));
        }
        x = x.append(destroy);
    }
    x = x.append_all(p.statuses.iter().map(|c| status(*c)));
    Element::builder("presence", NS)
        .a("from", from_attr(room, Some(&p.nick)))
        .a("type", (!p.available).then_some("unavailable"))
        .append_all(p.payload.elements().iter().cloned())
        .append(x)
        .append(occupant_id_el(p.occupant_id.as_str()))
        .build()
}

fn groupchat(room: &BareJid, m: &RoomMessage, history: bool) -> Element {
    let mut b = Element::builder("message", NS)
        .a("type", "groupchat")
        .a("from", from_attr(room, Some(&m.nick)))
        .a("id", m.id.clone())
        .append_all(m.payload.elements().iter().cloned())
        .append(
            Element::builder("stanza-id", ns::SID)
                .a("id", m.stanza_id.as_str())
                .a("by", room.to_string()),
        )
        .append(occupant_id_el(m.occupant_id.as_str()));
    if history {
        b = b.append(delay(room, m.at));
    }
    b.build()
}

fn delay(room: &BareJid, at: Timestamp) -> Element {
    Element::builder("delay", ns::DELAY)
        .a("from", room.to_string())
        .a("stamp", stamp(at))
        .build()
}

/// XEP-0082 date-time.
pub fn stamp(at: Timestamp) -> String {
    DateTime::<Utc>::from_timestamp_millis(at.millis())
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn subject_id(at: Option<Timestamp>) -> String {
    format!("subject-{}", at.map(|t| t.millis()).unwrap_or(0))
}

fn occupant_id_el(id: &str) -> Element {
    Element::builder("occupant-id", ns::OID).a("id", id).build()
}

fn status(code: u16) -> Element {
    Element::builder("status", ns::MUC_USER)
        .a("code", code.to_string())
        .build()
}

fn muc_user(codes: &[u16], item: Option<Element>) -> Element {
    Element::builder("x", ns::MUC_USER)
        .append_all(item)
        .append_all(codes.iter().map(|c| status(*c)))
        .build()
}

fn from_attr(room: &BareJid, nick: Option<&Nick>) -> String {
    match nick {
        Some(n) => n.occupant_jid(room).to_string(),
        None => room.to_string(),
    }
}

fn message_type(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Chat => "chat",
        MessageKind::Normal => "normal",
        MessageKind::Groupchat => "groupchat",
        MessageKind::Headline => "headline",
    }
}

fn kind_name(kind: StanzaKind) -> &'static str {
    match kind {
        StanzaKind::Presence => "presence",
        StanzaKind::Message => "message",
        StanzaKind::Iq => "iq",
    }
}

fn iq_body(body: &IqResponse) -> Option<Element> {
    match body {
        IqResponse::Empty => None,
        IqResponse::DiscoInfo {
            name,
            features,
            form,
        } => Some(disco_info("conference", "text", name, features, Some(form))),
        IqResponse::DiscoItems(items) => Some(disco_items(
            items
                .iter()
                .map(|(j, n)| (Jid::from(j.clone()), n.as_str())),
        )),
        IqResponse::AdminList(items) => Some(
            Element::builder("query", MUC_ADMIN)
                .append_all(items.iter().map(admin_item))
                .build(),
        ),
        IqResponse::ConfigForm(form) => Some(
            Element::builder("query", crate::inbound::MUC_OWNER)
                .append(Element::from(data_form(DataFormType::Form, form)))
                .build(),
        ),
    }
}

fn admin_item(i: &ListItem) -> Element {
    Element::builder("item", MUC_ADMIN)
        .a("affiliation", i.affiliation.as_str())
        .a("role", i.role.as_str())
        .a("jid", i.jid.as_ref().map(|j| j.to_string()))
        .a("nick", i.nick.as_ref().map(|n| n.to_string()))
        .build()
}

/// A disco#info result.
pub fn disco_info(
    category: &str,
    kind: &str,
    name: &str,
    features: &[&str],
    form: Option<&Form>,
) -> Element {
    Element::builder("query", ns::DISCO_INFO)
        .append(
            Element::builder("identity", ns::DISCO_INFO)
                .a("category", category)
                .a("type", kind)
                .a("name", name),
        )
        .append_all(features.iter().map(|f| {
            Element::builder("feature", ns::DISCO_INFO)
                .a("var", *f)
                .build()
        }))
        .append_all(form.map(|f| Element::from(data_form(DataFormType::Result_, f))))
        .build()
}

/// A disco#items result.
pub fn disco_items<'a>(items: impl Iterator<Item = (Jid, &'a str)>) -> Element {
    Element::builder("query", ns::DISCO_ITEMS)
        .append_all(items.map(|(jid, name)| {
            Element::builder("item", ns::DISCO_ITEMS)
                .a("jid", jid.to_string())
                .a("name", (!name.is_empty()).then_some(name))
                .build()
        }))
        .build()
}

fn data_form(type_: DataFormType, form: &Form) -> DataForm {
    DataForm {
        type_,
        title: form.title.clone(),
        instructions: None,
        fields: form
            .fields
            .iter()
            .map(|f| {
                let mut field = Field::new(&f.var, field_type(f.kind));
                field.label = f.label.clone();
                field.values = f.values.clone();
                field.options = f
                    .options
                    .iter()
                    .map(|(label, value)| Option_ {
                        label: Some(label.clone()),
                        value: value.clone(),
                    })
                    .collect();
                field
            })
            .collect(),
    }
}

fn field_type(kind: FieldKind) -> FieldType {
    match kind {
        FieldKind::Boolean => FieldType::Boolean,
        FieldKind::Hidden => FieldType::Hidden,
        FieldKind::JidMulti => FieldType::JidMulti,
        FieldKind::ListMulti => FieldType::ListMulti,
        FieldKind::ListSingle => FieldType::ListSingle,
        FieldKind::TextMulti => FieldType::TextMulti,
        FieldKind::TextPrivate => FieldType::TextPrivate,
        FieldKind::TextSingle => FieldType::TextSingle,
    }
}

/// Recipients per multicast stanza: far below a server's stanza size limit
/// (Prosody: 512 KiB on component streams).
pub const MULTICAST_CHUNK: usize = 500;

/// The id of the disco#info that asks a server whether it multicasts.
pub const MULTICAST_PROBE: &str = "dmuc-multicast-probe";

/// Asks `server` (from the component `from`) whether it offers XEP-0033
/// multicast; [`multicast_offered`] reads the answer.
pub fn multicast_probe(from: &BareJid, server: &BareJid) -> Element {
    Element::builder("iq", ns::DEFAULT_NS)
        .a("type", "get")
        .a("id", MULTICAST_PROBE)
        .a("from", from.to_string())
        .a("to", server.to_string())
        .append(Element::builder("query", ns::DISCO_INFO))
        .build()
}

/// If `el` answers a [`multicast_probe`]: whether the server multicasts.
pub fn multicast_offered(el: &Element) -> Option<bool> {
    if !el.is("iq", ns::DEFAULT_NS) || el.attr("id") != Some(MULTICAST_PROBE) {
        return None;
    }
    Some(
        el.attr("type") == Some("result")
            && el.get_child("query", ns::DISCO_INFO).is_some_and(|q| {
                q.children()
                    .any(|f| f.is("feature", ns::DISCO_INFO) && f.attr("var") == Some(NS_ADDRESS))
            }),
    )
}

/// The stanzas for `to` standing for `stanza` from `room`: one multicast
/// (per [`MULTICAST_CHUNK`] recipients) through `via` when there are
/// several recipients and a server to expand it, else one stanza each.
pub fn render(
    room: &BareJid,
    stanza: &Outgoing,
    to: &[FullJid],
    via: Option<&BareJid>,
) -> Vec<Element> {
    let el = build(room, stanza);
    match via {
        Some(server) if to.len() > 1 => multicast(el, to, server, MULTICAST_CHUNK),
        _ => to.iter().map(|jid| addressed(el.clone(), jid)).collect(),
    }
}

/// One stanza for many recipients through the XEP-0033 multicast service
/// `server` (bcc addresses: each recipient gets a copy without the list),
/// `chunk` recipients per stanza.
pub fn multicast(el: Element, to: &[FullJid], server: &BareJid, chunk: usize) -> Vec<Element> {
    to.chunks(chunk.max(1))
        .map(|group| {
            let mut copy = el.clone();
            set_attr(&mut copy, "to", server.to_string());
            copy.append_child(
                Element::builder("addresses", NS_ADDRESS)
                    .append_all(group.iter().map(|jid| {
                        Element::builder("address", NS_ADDRESS)
                            .a("type", "bcc")
                            .a("jid", jid.to_string())
                            .build()
                    }))
                    .build(),
            );
            copy
        })
        .collect()
}

/// Sets the recipient of a stanza built by [`build`].
pub fn addressed(mut el: Element, to: &FullJid) -> Element {
    set_attr(&mut el, "to", to.to_string());
    el
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notice is a groupchat message from the room's bare JID with a
    /// body and nothing else, which clients show as a room message.
    #[test]
    fn a_notice_is_a_groupchat_message_from_the_room() {
        let room: BareJid = "r@muc.a.test".parse().unwrap();
        let el = build(
            &room,
            &Outgoing::Notice {
                text: "This room is split from its master & <alone>".into(),
            },
        );
        let to: FullJid = "bob@b.test/x".parse().unwrap();
        let el = addressed(el, &to);
        assert_eq!(
            String::from(&el),
            "<message xmlns='jabber:component:accept' from='r@muc.a.test' to='bob@b.test/x' \
             type='groupchat'><body>This room is split from its master &amp; \
             &lt;alone&gt;</body></message>"
        );
    }

    /// A merged message keeps the split's stanza id and says when it was
    /// sent (XEP-0203), as history does.
    #[test]
    fn a_merged_message_carries_its_id_and_a_delay() {
        use dmuc_room::{OccupantId, Payload, Seq, StanzaId};
        let room: BareJid = "r@muc.a.test".parse().unwrap();
        let at = Timestamp(1_700_000_000_123);
        let message = std::sync::Arc::new(RoomMessage {
            seq: Seq(7),
            stanza_id: StanzaId::provisional("b.test", Timestamp(0x10), Seq(3)),
            occupant_id: OccupantId::from_stored("oid".into()),
            nick: Nick::new("bob").unwrap(),
            sender: "bob@b.test".parse().unwrap(),
            id: Some("m1".into()),
            at,
            payload: Payload::from_xml("<body xmlns='jabber:client'>hi</body>").unwrap(),
            size: 2,
        });
        let el = build(&room, &Outgoing::Merged(message));
        assert_eq!(
            String::from(&el),
            "<message xmlns='jabber:component:accept' from='r@muc.a.test/bob' id='m1' \
             type='groupchat'><body xmlns='jabber:client'>hi</body>\
             <stanza-id xmlns='urn:xmpp:sid:0' by='r@muc.a.test' id='split:b.test:10:3'/>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='oid'/>\
             <delay xmlns='urn:xmpp:delay' from='r@muc.a.test' stamp='2023-11-14T22:13:20.123Z'/>\
             </message>"
        );
    }
}
