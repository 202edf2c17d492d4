//! The inbound edge: a raw stanza from the component link becomes either a
//! room [`Input`], a service request, or an error reply. Nothing past this
//! module sees XML attributes or namespaces of inbound stanzas.

use chrono::DateTime;
use dmuc_room::event::{AdminFilter, AdminItem, IqRequest, JoinRequest, MessageKind};
use dmuc_room::form::Submission;
use dmuc_room::{Affiliation, Condition, HistoryRequest, Input, Nick, Payload, Role, Timestamp};
use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use xmpp_parsers::data_forms::{DataForm, DataFormType};
use xmpp_parsers::ns;

use crate::outbound::error_reply;

pub const MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
pub const MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";

/// Where an inbound stanza goes.
#[derive(Debug)]
pub enum Routed {
    /// To a room; `creates` is set for a join, which may create the room.
    Room {
        room: BareJid,
        input: Input,
        creates: bool,
    },
    /// An IQ to the service domain itself.
    Service {
        from: FullJid,
        id: String,
        request: ServiceRequest,
    },
    /// Answer with this error and do nothing else.
    Reply(Element),
    /// Nothing to do (a result, or an error we must not answer).
    Drop(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceRequest {
    DiscoInfo,
    DiscoItems,
    Ping,
    Unsupported,
}

/// Classifies one inbound stanza addressed to `service` (our domain).
pub fn route(el: Element, service: &BareJid, max_message_bytes: usize) -> Routed {
    let reject = |el: &Element, condition, text| match error_reply(el, condition, text) {
        Some(reply) => Routed::Reply(reply),
        None => Routed::Drop("cannot answer an error or an unaddressed stanza"),
    };
    let from = match el.attr("from").map(str::parse::<Jid>) {
        Some(Ok(j)) => match j.try_into_full() {
            Ok(full) => full,
            // Servers and bare JIDs are not occupants: only IQs make sense.
            Err(_) => return reject(&el, Condition::BadRequest, Some("a full JID is required")),
        },
        _ => return Routed::Drop("missing or malformed from"),
    };
    let to = match el.attr("to").map(str::parse::<Jid>) {
        Some(Ok(j)) => j,
        _ => return reject(&el, Condition::JidMalformed, None),
    };
    if to.domain().as_str() != service.domain().as_str() {
        return reject(&el, Condition::ItemNotFound, None);
    }
    let stanza_type = el.attr("type").unwrap_or("");
    if stanza_type == "error" && el.name() == "message" && !is_gone(&el) {
        return Routed::Drop("error stanza");
    }
    let Some(node) = to.node() else {
        return service_stanza(el, from);
    };
    let room = BareJid::from_parts(Some(node), to.domain());
    let nick = match to.resource().map(|r| Nick::new(r.as_str())) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return reject(&el, Condition::JidMalformed, Some("invalid nickname")),
    };
    let routed = |input: Input| Routed::Room {
        room: room.clone(),
        input,
        creates: false,
    };
    match el.name() {
        "presence" => match (stanza_type, nick) {
            ("error", _) => routed(Input::Bounced { from }),
            ("unavailable", _) => routed(Input::Leave {
                from,
                payload: user_payload(&el, &room),
            }),
            ("", Some(nick)) => {
                let join = el.get_child("x", ns::MUC).map(join_request);
                let creates = join.is_some();
                Routed::Room {
                    input: Input::Presence {
                        from,
                        nick,
                        join,
                        payload: user_payload(&el, &room),
                    },
                    room,
                    creates,
                }
            }
            ("", None) => reject(&el, Condition::JidMalformed, Some("a nickname is required")),
            _ => Routed::Drop("subscription presence to a room"),
        },
        "message" if stanza_type == "error" => routed(Input::Bounced { from }),
        "message" => {
            let size = String::from(&el).len();
            if size > max_message_bytes {
                return reject(&el, Condition::PolicyViolation, Some("message too large"));
            }
            let id = el.attr("id").map(str::to_owned);
            let kind = match stanza_type {
                "groupchat" => MessageKind::Groupchat,
                "chat" => MessageKind::Chat,
                "" | "normal" => MessageKind::Normal,
                "headline" => MessageKind::Headline,
                _ => return reject(&el, Condition::BadRequest, Some("unknown message type")),
            };
            match (nick, kind) {
                (Some(to), kind) => routed(Input::Private {
                    from,
                    to,
                    id,
                    kind,
                    payload: user_payload(&el, &room),
                }),
                (None, MessageKind::Groupchat) => routed(Input::Groupchat {
                    from,
                    id,
                    subject: el.get_child("subject", ns::DEFAULT_NS).map(Element::text),
                    has_body: el.get_child("body", ns::DEFAULT_NS).is_some(),
                    payload: user_payload(&el, &room),
                    size,
                }),
                (None, _) => reject(
                    &el,
                    Condition::FeatureNotImplemented,
                    Some("invitations and voice requests are not supported yet"),
                ),
            }
        }
        "iq" if nick.is_some() => {
            let to = nick.expect("checked");
            let Some(id) = el.attr("id").map(str::to_owned) else {
                return Routed::Drop("iq without id");
            };
            let payload = Payload::new(el.children().cloned().collect());
            let input = match stanza_type {
                "get" if el.get_child("ping", ns::PING).is_some() => Input::Iq {
                    from,
                    to: Some(to),
                    id,
                    request: IqRequest::Ping,
                },
                "get" | "set" => Input::Iq {
                    from,
                    to: Some(to),
                    id,
                    request: IqRequest::Relay {
                        set: stanza_type == "set",
                        payload,
                    },
                },
                "result" | "error" => Input::IqResponse {
                    from,
                    to,
                    id,
                    error: stanza_type == "error",
                    payload,
                },
                _ => return reject(&el, Condition::BadRequest, Some("unknown iq type")),
            };
            routed(input)
        }
        "iq" => match iq_request(&el) {
            Ok(request) => {
                let Some(id) = el.attr("id").map(str::to_owned) else {
                    return Routed::Drop("iq without id");
                };
                routed(Input::Iq {
                    from,
                    to: nick,
                    id,
                    request,
                })
            }
            Err(IqProblem::NotARequest) => Routed::Drop("iq result"),
            Err(IqProblem::Bad(text)) => reject(&el, Condition::BadRequest, Some(text)),
        },
        _ => Routed::Drop("not a stanza"),
    }
}

/// Whether an error bounced to the room means the occupant's session is
/// gone (XEP-0045 §18.1), as opposed to a complaint about one stanza.
fn is_gone(el: &Element) -> bool {
    const GONE: &[&str] = &[
        "gone",
        "item-not-found",
        "recipient-unavailable",
        "redirect",
        "remote-server-not-found",
        "remote-server-timeout",
        "service-unavailable",
    ];
    el.name() == "message"
        && el
            .get_child("error", ns::DEFAULT_NS)
            .and_then(|e| e.children().find(|c| c.ns() == ns::XMPP_STANZAS))
            .is_some_and(|c| GONE.contains(&c.name()))
}

fn service_stanza(el: Element, from: FullJid) -> Routed {
    if el.name() != "iq" {
        return match error_reply(&el, Condition::ServiceUnavailable, None) {
            Some(reply) if el.name() == "message" => Routed::Reply(reply),
            _ => Routed::Drop("presence to the service"),
        };
    }
    let Some(id) = el.attr("id").map(str::to_owned) else {
        return Routed::Drop("iq without id");
    };
    let request = match (el.attr("type"), el.children().next()) {
        (Some("get"), Some(q)) if q.is("query", ns::DISCO_INFO) && q.attr("node").is_none() => {
            ServiceRequest::DiscoInfo
        }
        (Some("get"), Some(q)) if q.is("query", ns::DISCO_ITEMS) && q.attr("node").is_none() => {
            ServiceRequest::DiscoItems
        }
        (Some("get"), Some(q)) if q.is("ping", ns::PING) => ServiceRequest::Ping,
        (Some("get" | "set"), _) => ServiceRequest::Unsupported,
        _ => return Routed::Drop("iq result to the service"),
    };
    Routed::Service { from, id, request }
}

enum IqProblem {
    NotARequest,
    Bad(&'static str),
}

fn iq_request(el: &Element) -> Result<IqRequest, IqProblem> {
    let set = match el.attr("type") {
        Some("get") => false,
        Some("set") => true,
        _ => return Err(IqProblem::NotARequest),
    };
    let Some(q) = el.children().next() else {
        return Err(IqProblem::Bad("empty iq"));
    };
    Ok(match (set, q.name(), q.ns().as_str()) {
        (false, "query", ns::DISCO_INFO) if q.attr("node").is_none() => IqRequest::DiscoInfo,
        (false, "query", ns::DISCO_ITEMS) if q.attr("node").is_none() => IqRequest::DiscoItems,
        (false, "ping", ns::PING) => IqRequest::Ping,
        (false, "query", MUC_ADMIN) => IqRequest::AdminList(admin_filter(q)?),
        (true, "query", MUC_ADMIN) => IqRequest::AdminSet(admin_items(q)?),
        (false, "query", MUC_OWNER) => IqRequest::ConfigGet,
        (true, "query", MUC_OWNER) => owner_set(q)?,
        _ => IqRequest::Unsupported,
    })
}

fn admin_filter(q: &Element) -> Result<AdminFilter, IqProblem> {
    let item = q
        .get_child("item", MUC_ADMIN)
        .ok_or(IqProblem::Bad("missing item"))?;
    match (item.attr("role"), item.attr("affiliation")) {
        (Some(r), None) => Role::parse(r)
            .map(AdminFilter::Role)
            .ok_or(IqProblem::Bad("unknown role")),
        (None, Some(a)) => Affiliation::parse(a)
            .map(AdminFilter::Affiliation)
            .ok_or(IqProblem::Bad("unknown affiliation")),
        _ => Err(IqProblem::Bad("an item needs a role or an affiliation")),
    }
}

fn admin_items(q: &Element) -> Result<Vec<AdminItem>, IqProblem> {
    let items: Result<Vec<_>, _> = q
        .children()
        .filter(|c| c.is("item", MUC_ADMIN))
        .map(|item| {
            let reason = item
                .get_child("reason", MUC_ADMIN)
                .map(Element::text)
                .filter(|r| !r.is_empty());
            match (item.attr("role"), item.attr("affiliation")) {
                (Some(role), _) => Ok(AdminItem::Role {
                    nick: item
                        .attr("nick")
                        .and_then(|n| Nick::new(n).ok())
                        .ok_or(IqProblem::Bad("a role change needs a nick"))?,
                    role: Role::parse(role).ok_or(IqProblem::Bad("unknown role"))?,
                    reason,
                }),
                (None, Some(aff)) => Ok(AdminItem::Affiliation {
                    jid: item
                        .attr("jid")
                        .and_then(|j| j.parse::<Jid>().ok())
                        .map(Jid::into_bare)
                        .ok_or(IqProblem::Bad("an affiliation change needs a jid"))?,
                    affiliation: Affiliation::parse(aff)
                        .ok_or(IqProblem::Bad("unknown affiliation"))?,
                    reason,
                }),
                (None, None) => Err(IqProblem::Bad("an item needs a role or an affiliation")),
            }
        })
        .collect();
    let items = items?;
    if items.is_empty() {
        return Err(IqProblem::Bad("no items"));
    }
    Ok(items)
}

fn owner_set(q: &Element) -> Result<IqRequest, IqProblem> {
    if let Some(d) = q.get_child("destroy", MUC_OWNER) {
        return Ok(IqRequest::Destroy {
            reason: d
                .get_child("reason", MUC_OWNER)
                .map(Element::text)
                .filter(|r| !r.is_empty()),
            alternate: d
                .attr("jid")
                .and_then(|j| j.parse::<Jid>().ok())
                .map(Jid::into_bare),
        });
    }
    let x = q
        .get_child("x", ns::DATA_FORMS)
        .ok_or(IqProblem::Bad("missing data form"))?;
    let form = DataForm::try_from(x.clone()).map_err(|_| IqProblem::Bad("malformed data form"))?;
    Ok(match form.type_ {
        DataFormType::Cancel => IqRequest::ConfigSet(None),
        DataFormType::Submit => IqRequest::ConfigSet(Some(Submission {
            fields: form
                .fields
                .into_iter()
                .filter_map(|f| Some((f.var?, f.values)))
                .collect(),
        })),
        _ => return Err(IqProblem::Bad("the form must be a submission")),
    })
}

fn join_request(x: &Element) -> JoinRequest {
    let history = x.get_child("history", ns::MUC).map(|h| {
        let num = |name| h.attr(name).and_then(|v| v.parse().ok());
        HistoryRequest {
            max_chars: num("maxchars"),
            max_stanzas: num("maxstanzas"),
            seconds: h.attr("seconds").and_then(|v| v.parse().ok()),
            since: h
                .attr("since")
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| Timestamp(t.timestamp_millis())),
        }
    });
    JoinRequest {
        password: x.get_child("password", ns::MUC).map(Element::text),
        history: history.unwrap_or_default(),
    }
}

/// The children a user sent that the room passes on: everything but MUC
/// protocol elements and ids that only the room may assign (a forged
/// stanza-id `by` the room or occupant-id is stripped).
fn user_payload(el: &Element, room: &BareJid) -> Payload {
    Payload::new(
        el.children()
            .filter(|c| {
                !(c.is("x", ns::MUC)
                    || c.is("x", ns::MUC_USER)
                    || c.is("occupant-id", ns::OID)
                    || c.is("delay", ns::DELAY)
                    || (c.is("stanza-id", ns::SID) && c.attr("by") == Some(room.as_str())))
            })
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> BareJid {
        "conference.a.test".parse().unwrap()
    }

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn route_xml(xml: &str) -> Routed {
        route(parse(xml), &service(), 16 * 1024)
    }

    fn reply_condition(r: &Routed) -> String {
        match r {
            Routed::Reply(el) => {
                let error = el.get_child("error", ns::DEFAULT_NS).expect("error child");
                error.children().next().unwrap().name().to_owned()
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn join_with_history_limits() {
        let r = route_xml(
            "<presence xmlns='jabber:component:accept' from='u@b.test/r' to='room@conference.a.test/Nick'>\
             <x xmlns='http://jabber.org/protocol/muc'><password>pw</password>\
             <history maxstanzas='5' since='1970-01-01T00:00:10Z'/></x><show>away</show></presence>",
        );
        let Routed::Room {
            room,
            input:
                Input::Presence {
                    join: Some(join),
                    payload,
                    nick,
                    ..
                },
            creates: true,
        } = r
        else {
            panic!("{r:?}");
        };
        assert_eq!(room.as_str(), "room@conference.a.test");
        assert_eq!(nick.as_str(), "Nick");
        assert_eq!(join.password.as_deref(), Some("pw"));
        assert_eq!(join.history.max_stanzas, Some(5));
        assert_eq!(join.history.since, Some(Timestamp(10_000)));
        assert_eq!(payload.elements().len(), 1, "the muc x is not passed on");
    }

    #[test]
    fn forged_ids_are_stripped() {
        let r = route_xml(
            "<message xmlns='jabber:component:accept' type='groupchat' from='u@b.test/r' to='room@conference.a.test' id='x'>\
             <body>hi</body><stanza-id xmlns='urn:xmpp:sid:0' by='room@conference.a.test' id='forged'/>\
             <occupant-id xmlns='urn:xmpp:occupant-id:0' id='forged'/><origin-id xmlns='urn:xmpp:sid:0' id='o'/></message>",
        );
        let Routed::Room {
            input:
                Input::Groupchat {
                    payload,
                    has_body: true,
                    ..
                },
            ..
        } = r
        else {
            panic!("{r:?}");
        };
        let names: Vec<_> = payload
            .elements()
            .iter()
            .map(|e| e.name().to_owned())
            .collect();
        assert_eq!(names, ["body", "origin-id"]);
    }

    #[test]
    fn bad_input_gets_precise_errors() {
        let bad_nick = route_xml(
            "<presence xmlns='jabber:component:accept' from='u@b.test/r' to='room@conference.a.test/bad&#xFFF9;nick'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        );
        assert_eq!(reply_condition(&bad_nick), "jid-malformed");
        let no_nick = route_xml(
            "<presence xmlns='jabber:component:accept' from='u@b.test/r' to='room@conference.a.test'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
        );
        assert_eq!(reply_condition(&no_nick), "jid-malformed");
        let big = format!(
            "<message xmlns='jabber:component:accept' type='groupchat' from='u@b.test/r' to='r@conference.a.test'><body>{}</body></message>",
            "x".repeat(20_000)
        );
        assert_eq!(reply_condition(&route_xml(&big)), "policy-violation");
        let bad_type = route_xml(
            "<message xmlns='jabber:component:accept' type='bogus' from='u@b.test/r' to='r@conference.a.test'/>",
        );
        assert_eq!(reply_condition(&bad_type), "bad-request");
        let admin = route_xml(
            "<iq xmlns='jabber:component:accept' type='set' id='1' from='u@b.test/r' to='r@conference.a.test'><query xmlns='http://jabber.org/protocol/muc#admin'><item/></query></iq>",
        );
        assert_eq!(reply_condition(&admin), "bad-request");
    }

    #[test]
    fn unknown_iq_namespace_reaches_the_room_as_unsupported() {
        let r = route_xml(
            "<iq xmlns='jabber:component:accept' type='get' id='1' from='u@b.test/r' to='r@conference.a.test'><query xmlns='urn:example:unknown'/></iq>",
        );
        assert!(matches!(
            r,
            Routed::Room {
                input: Input::Iq {
                    request: IqRequest::Unsupported,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn iqs_to_occupants_are_relayed_and_their_answers_routed_back() {
        let request = route_xml(
            "<iq xmlns='jabber:component:accept' type='get' id='1' from='u@b.test/r' to='r@conference.a.test/n'><vCard xmlns='vcard-temp'/></iq>",
        );
        assert!(matches!(
            request,
            Routed::Room {
                input: Input::Iq {
                    request: IqRequest::Relay { set: false, .. },
                    ..
                },
                ..
            }
        ));
        let error = route_xml(
            "<iq xmlns='jabber:component:accept' type='error' id='t.1' from='u@b.test/r' to='r@conference.a.test/n'><error type='cancel'/></iq>",
        );
        assert!(matches!(
            error,
            Routed::Room {
                input: Input::IqResponse { error: true, .. },
                ..
            }
        ));
    }

    #[test]
    fn errors_are_never_answered() {
        let r = route_xml(
            "<message xmlns='jabber:component:accept' type='error' from='u@b.test/r' to='r@conference.a.test'/>",
        );
        assert!(matches!(r, Routed::Drop(_)));
    }

    #[test]
    fn a_bounce_saying_the_session_is_gone_removes_the_occupant() {
        let bounce = |condition: &str| {
            route_xml(&format!(
                "<message xmlns='jabber:component:accept' type='error' from='u@b.test/r' to='r@conference.a.test/n'>\
                 <error type='cancel'><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>"
            ))
        };
        assert!(matches!(
            bounce("recipient-unavailable"),
            Routed::Room {
                input: Input::Bounced { .. },
                ..
            }
        ));
        assert!(matches!(bounce("policy-violation"), Routed::Drop(_)));
    }

    #[test]
    fn config_submission_and_cancel() {
        let submit = route_xml(
            "<iq xmlns='jabber:component:accept' type='set' id='1' from='u@b.test/r' to='r@conference.a.test'>\
             <query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_roomname'><value>Lounge</value></field></x></query></iq>",
        );
        let Routed::Room {
            input:
                Input::Iq {
                    request: IqRequest::ConfigSet(Some(form)),
                    ..
                },
            ..
        } = submit
        else {
            panic!("{submit:?}");
        };
        assert_eq!(form.single("muc#roomconfig_roomname"), Some("Lounge"));
        let cancel = route_xml(
            "<iq xmlns='jabber:component:accept' type='set' id='1' from='u@b.test/r' to='r@conference.a.test'>\
             <query xmlns='http://jabber.org/protocol/muc#owner'><x xmlns='jabber:x:data' type='cancel'/></query></iq>",
        );
        assert!(matches!(
            cancel,
            Routed::Room {
                input: Input::Iq {
                    request: IqRequest::ConfigSet(None),
                    ..
                },
                ..
            }
        ));
    }
}
