//! [`Input`] ⇄ [`pb::Input`]: every stanza kind a room handles.
//!
//! Decoding re-parses every JID (full or bare, as the domain type says),
//! nick and payload, so a replica never runs on a value the master's XMPP
//! edge would have refused.

use dmuc_room::event::{AdminFilter, AdminItem, IqRequest, JoinRequest};
use dmuc_room::form::Submission;
use dmuc_room::{HistoryRequest, Input, Merge, StanzaId, Timestamp};

use super::enums::{
    affiliation, affiliation_to_pb, message_kind, message_kind_to_pb, role, role_to_pb,
};
use super::{bare_jid, full_jid, nick, payload, required, size};
use crate::error::Within;
use crate::pb::input::Kind;
use crate::{ProtocolError, pb};

impl From<&Input> for pb::Input {
    fn from(input: &Input) -> Self {
        let kind = match input {
            Input::Presence {
                from,
                nick,
                join,
                payload,
            } => Kind::Presence(pb::Presence {
                from: from.to_string(),
                nick: nick.to_string(),
                join: join.as_ref().map(join_to_pb),
                payload_xml: payload.to_xml(),
            }),
            Input::Leave { from, payload } => Kind::Leave(pb::Leave {
                from: from.to_string(),
                payload_xml: payload.to_xml(),
            }),
            Input::Bounced { from } => Kind::Bounced(pb::Bounced {
                from: from.to_string(),
            }),
            Input::Groupchat {
                from,
                id,
                subject,
                has_body,
                payload,
                size,
            } => Kind::Groupchat(pb::Groupchat {
                from: from.to_string(),
                id: id.clone(),
                subject: subject.clone(),
                has_body: *has_body,
                payload_xml: payload.to_xml(),
                size: *size as u64,
            }),
            Input::Private {
                from,
                to,
                id,
                kind,
                payload,
            } => Kind::Private(pb::Private {
                from: from.to_string(),
                to: to.to_string(),
                id: id.clone(),
                kind: message_kind_to_pb(*kind),
                payload_xml: payload.to_xml(),
            }),
            Input::Iq {
                from,
                to,
                id,
                request,
            } => Kind::Iq(pb::Iq {
                from: from.to_string(),
                to: to.as_ref().map(ToString::to_string),
                id: id.clone(),
                request: Some(iq_request_to_pb(request)),
            }),
            Input::IqResponse {
                from,
                to,
                id,
                error,
                payload,
            } => Kind::IqResponse(pb::IqResponse {
                from: from.to_string(),
                to: to.to_string(),
                id: id.clone(),
                error: *error,
                payload_xml: payload.to_xml(),
            }),
            Input::Shutdown => Kind::Shutdown(pb::Shutdown {}),
            Input::Merge(m) => Kind::Merge(Box::new(pb::Merge {
                domain: m.domain.clone(),
                began_ms: m.began.millis(),
                index: m.index,
                at_ms: m.at.millis(),
                local_id: m.local_id.as_ref().map(ToString::to_string),
                input: Some(Box::new(pb::Input::from(&m.input))),
            })),
        };
        pb::Input { kind: Some(kind) }
    }
}

/// Errors name fields from `input`, e.g. `input.presence.nick`.
impl TryFrom<pb::Input> for Input {
    type Error = ProtocolError;

    fn try_from(input: pb::Input) -> Result<Input, ProtocolError> {
        input_from_pb(input).within("input")
    }
}

fn input_from_pb(input: pb::Input) -> Result<Input, ProtocolError> {
    Ok(match required(input.kind, "kind")? {
        Kind::Presence(p) => Input::Presence {
            from: full_jid(&p.from, "from").within("presence")?,
            nick: nick(&p.nick, "nick").within("presence")?,
            join: p
                .join
                .map(join_from_pb)
                .transpose()
                .within("join")
                .within("presence")?,
            payload: payload(&p.payload_xml, "payload_xml").within("presence")?,
        },
        Kind::Leave(l) => Input::Leave {
            from: full_jid(&l.from, "from").within("leave")?,
            payload: payload(&l.payload_xml, "payload_xml").within("leave")?,
        },
        Kind::Bounced(b) => Input::Bounced {
            from: full_jid(&b.from, "from").within("bounced")?,
        },
        Kind::Groupchat(g) => Input::Groupchat {
            from: full_jid(&g.from, "from").within("groupchat")?,
            id: g.id,
            subject: g.subject,
            has_body: g.has_body,
            payload: payload(&g.payload_xml, "payload_xml").within("groupchat")?,
            size: size(g.size, "size").within("groupchat")?,
        },
        Kind::Private(p) => Input::Private {
            from: full_jid(&p.from, "from").within("private")?,
            to: nick(&p.to, "to").within("private")?,
            id: p.id,
            kind: message_kind(p.kind, "kind").within("private")?,
            payload: payload(&p.payload_xml, "payload_xml").within("private")?,
        },
        Kind::Iq(iq) => Input::Iq {
            from: full_jid(&iq.from, "from").within("iq")?,
            to: iq
                .to
                .as_deref()
                .map(|to| nick(to, "to"))
                .transpose()
                .within("iq")?,
            id: iq.id,
            request: iq_request_from_pb(required(iq.request, "request").within("iq")?)
                .within("request")
                .within("iq")?,
        },
        Kind::IqResponse(r) => Input::IqResponse {
            from: full_jid(&r.from, "from").within("iq_response")?,
            to: nick(&r.to, "to").within("iq_response")?,
            id: r.id,
            error: r.error,
            payload: payload(&r.payload_xml, "payload_xml").within("iq_response")?,
        },
        Kind::Shutdown(pb::Shutdown {}) => Input::Shutdown,
        Kind::Merge(m) => Input::Merge(Box::new(merge_from_pb(*m).within("merge")?)),
    })
}

/// A merge of one input of `domain`'s split: never of another merge, and
/// with a provisional id of that split, if any.
fn merge_from_pb(m: pb::Merge) -> Result<Merge, ProtocolError> {
    let domain = bare_jid(&m.domain, "domain")?;
    if domain.node().is_some() {
        return Err(ProtocolError::invalid("domain", "not a domain"));
    }
    let domain = domain.to_string();
    let began = Timestamp(m.began_ms);
    let input = *required(m.input, "input")?;
    // Checked before decoding, so that nesting cannot recurse.
    if matches!(input.kind, Some(Kind::Merge(_))) {
        return Err(ProtocolError::invalid(
            "input",
            "a merge cannot hold a merge",
        ));
    }
    let local_id = m
        .local_id
        .map(|id| {
            StanzaId::parse_provisional(&id, &domain, began).ok_or_else(|| {
                ProtocolError::invalid("local_id", "not a provisional id of this split")
            })
        })
        .transpose()?;
    Ok(Merge {
        domain,
        began,
        index: m.index,
        at: Timestamp(m.at_ms),
        local_id,
        input: input_from_pb(input).within("input")?,
    })
}

fn join_to_pb(join: &JoinRequest) -> pb::JoinRequest {
    let h = &join.history;
    pb::JoinRequest {
        password: join.password.clone(),
        history: Some(pb::HistoryRequest {
            max_chars: h.max_chars.map(|v| v as u64),
            max_stanzas: h.max_stanzas.map(|v| v as u64),
            seconds: h.seconds,
            since_ms: h.since.map(Timestamp::millis),
        }),
    }
}

fn join_from_pb(join: pb::JoinRequest) -> Result<JoinRequest, ProtocolError> {
    // Absent history is "no limits", the same as an empty one.
    let h = join.history.unwrap_or_default();
    Ok(JoinRequest {
        password: join.password,
        history: HistoryRequest {
            max_chars: h
                .max_chars
                .map(|v| size(v, "max_chars"))
                .transpose()
                .within("history")?,
            max_stanzas: h
                .max_stanzas
                .map(|v| size(v, "max_stanzas"))
                .transpose()
                .within("history")?,
            seconds: h.seconds,
            since: h.since_ms.map(Timestamp),
        },
    })
}

fn iq_request_to_pb(request: &IqRequest) -> pb::IqRequest {
    use pb::iq_request::Kind as Iq;
    let kind = match request {
        IqRequest::DiscoInfo => Iq::DiscoInfo(pb::DiscoInfo {}),
        IqRequest::DiscoItems => Iq::DiscoItems(pb::DiscoItems {}),
        IqRequest::Ping => Iq::Ping(pb::Ping {}),
        IqRequest::AdminList(filter) => Iq::AdminList(pb::AdminFilter {
            filter: Some(match filter {
                AdminFilter::Role(r) => pb::admin_filter::Filter::Role(role_to_pb(*r)),
                AdminFilter::Affiliation(a) => {
                    pb::admin_filter::Filter::Affiliation(affiliation_to_pb(*a))
                }
            }),
        }),
        IqRequest::AdminSet(items) => Iq::AdminSet(pb::AdminSet {
            items: items.iter().map(admin_item_to_pb).collect(),
        }),
        IqRequest::ConfigGet => Iq::ConfigGet(pb::ConfigGet {}),
        IqRequest::ConfigSet(submission) => Iq::ConfigSet(pb::ConfigSet {
            submission: submission.as_ref().map(|s| pb::Submission {
                fields: s
                    .fields
                    .iter()
                    .map(|(var, values)| pb::SubmissionField {
                        var: var.clone(),
                        values: values.clone(),
                    })
                    .collect(),
            }),
        }),
        IqRequest::Destroy { reason, alternate } => Iq::Destroy(pb::Destroy {
            reason: reason.clone(),
            alternate: alternate.as_ref().map(ToString::to_string),
        }),
        IqRequest::Unsupported => Iq::Unsupported(pb::Unsupported {}),
        IqRequest::Relay { set, payload } => Iq::Relay(pb::Relay {
            set: *set,
            payload_xml: payload.to_xml(),
        }),
    };
    pb::IqRequest { kind: Some(kind) }
}

fn iq_request_from_pb(request: pb::IqRequest) -> Result<IqRequest, ProtocolError> {
    use pb::iq_request::Kind as Iq;
    Ok(match required(request.kind, "kind")? {
        Iq::DiscoInfo(pb::DiscoInfo {}) => IqRequest::DiscoInfo,
        Iq::DiscoItems(pb::DiscoItems {}) => IqRequest::DiscoItems,
        Iq::Ping(pb::Ping {}) => IqRequest::Ping,
        Iq::AdminList(filter) => IqRequest::AdminList(
            match required(filter.filter, "filter").within("admin_list")? {
                pb::admin_filter::Filter::Role(r) => {
                    AdminFilter::Role(role(r, "role").within("admin_list")?)
                }
                pb::admin_filter::Filter::Affiliation(a) => {
                    AdminFilter::Affiliation(affiliation(a, "affiliation").within("admin_list")?)
                }
            },
        ),
        Iq::AdminSet(set) => IqRequest::AdminSet(
            set.items
                .into_iter()
                .enumerate()
                .map(|(i, item)| admin_item_from_pb(item).within_item("items", i))
                .collect::<Result<_, _>>()
                .within("admin_set")?,
        ),
        Iq::ConfigGet(pb::ConfigGet {}) => IqRequest::ConfigGet,
        Iq::ConfigSet(set) => IqRequest::ConfigSet(set.submission.map(|s| Submission {
            fields: s.fields.into_iter().map(|f| (f.var, f.values)).collect(),
        })),
        Iq::Destroy(d) => IqRequest::Destroy {
            reason: d.reason,
            alternate: d
                .alternate
                .as_deref()
                .map(|j| bare_jid(j, "alternate"))
                .transpose()
                .within("destroy")?,
        },
        Iq::Unsupported(pb::Unsupported {}) => IqRequest::Unsupported,
        Iq::Relay(r) => IqRequest::Relay {
            set: r.set,
            payload: payload(&r.payload_xml, "payload_xml").within("relay")?,
        },
    })
}

fn admin_item_to_pb(item: &AdminItem) -> pb::AdminItem {
    use pb::admin_item::Kind as Item;
    pb::AdminItem {
        kind: Some(match item {
            AdminItem::Role { nick, role, reason } => Item::Role(pb::RoleChange {
                nick: nick.to_string(),
                role: role_to_pb(*role),
                reason: reason.clone(),
            }),
            AdminItem::Affiliation {
                jid,
                affiliation,
                reason,
            } => Item::Affiliation(pb::AffiliationChange {
                jid: jid.to_string(),
                affiliation: affiliation_to_pb(*affiliation),
                reason: reason.clone(),
            }),
        }),
    }
}

fn admin_item_from_pb(item: pb::AdminItem) -> Result<AdminItem, ProtocolError> {
    use pb::admin_item::Kind as Item;
    Ok(match required(item.kind, "kind")? {
        Item::Role(r) => AdminItem::Role {
            nick: nick(&r.nick, "nick").within("role")?,
            role: role(r.role, "role").within("role")?,
            reason: r.reason,
        },
        Item::Affiliation(a) => AdminItem::Affiliation {
            jid: bare_jid(&a.jid, "jid").within("affiliation")?,
            affiliation: affiliation(a.affiliation, "affiliation").within("affiliation")?,
            reason: a.reason,
        },
    })
}

#[cfg(test)]
mod tests {
    //! Invalid input; round trips of every variant are property-tested in
    //! `tests/round_trip.rs`.
    use super::*;

    fn presence() -> pb::Presence {
        pb::Presence {
            from: "alice@a.test/pc".into(),
            nick: "alice".into(),
            join: Some(pb::JoinRequest::default()),
            payload_xml: String::new(),
        }
    }

    fn decode(kind: Kind) -> Result<Input, ProtocolError> {
        Input::try_from(pb::Input { kind: Some(kind) })
    }

    fn field(r: Result<Input, ProtocolError>) -> String {
        r.unwrap_err().field().to_owned()
    }

    #[test]
    fn a_valid_presence_decodes() {
        let input = decode(Kind::Presence(presence())).unwrap();
        assert!(matches!(input, Input::Presence { join: Some(_), .. }));
    }

    #[test]
    fn missing_oneof_is_an_error() {
        assert_eq!(
            Input::try_from(pb::Input { kind: None }),
            Err(ProtocolError::Missing {
                field: "input.kind".into()
            })
        );
        let iq = |request| {
            decode(Kind::Iq(pb::Iq {
                from: "alice@a.test/pc".into(),
                to: None,
                id: "1".into(),
                request,
            }))
        };
        assert_eq!(field(iq(None)), "input.iq.request");
        assert_eq!(
            field(iq(Some(pb::IqRequest { kind: None }))),
            "input.iq.request.kind"
        );
        let admin_list = pb::iq_request::Kind::AdminList(pb::AdminFilter { filter: None });
        assert_eq!(
            field(iq(Some(pb::IqRequest {
                kind: Some(admin_list)
            }))),
            "input.iq.request.admin_list.filter"
        );
        let bad_item = pb::iq_request::Kind::AdminSet(pb::AdminSet {
            items: vec![
                admin_item_to_pb(&AdminItem::Role {
                    nick: dmuc_room::Nick::new("a").unwrap(),
                    role: dmuc_room::Role::None,
                    reason: None,
                }),
                pb::AdminItem { kind: None },
            ],
        });
        assert_eq!(
            field(iq(Some(pb::IqRequest {
                kind: Some(bad_item)
            }))),
            "input.iq.request.admin_set.items[1].kind"
        );
    }

    #[test]
    fn bad_jids_are_errors() {
        // A bare JID where a session (full JID) is required.
        let err = decode(Kind::Presence(pb::Presence {
            from: "alice@a.test".into(),
            ..presence()
        }))
        .unwrap_err();
        assert!(
            matches!(&err, ProtocolError::Jid { field, .. } if field == "input.presence.from"),
            "{err:?}"
        );
        for bad in ["", "@a.test/x", "alice@/x", "a@b@c/x"] {
            assert_eq!(
                field(decode(Kind::Leave(pb::Leave {
                    from: bad.into(),
                    payload_xml: String::new()
                }))),
                "input.leave.from",
                "{bad:?}"
            );
        }
        let destroy = pb::iq_request::Kind::Destroy(pb::Destroy {
            reason: None,
            alternate: Some("elsewhere@conference.a.test/res".into()),
        });
        assert_eq!(
            field(decode(Kind::Iq(pb::Iq {
                from: "alice@a.test/pc".into(),
                to: None,
                id: "1".into(),
                request: Some(pb::IqRequest {
                    kind: Some(destroy)
                }),
            }))),
            "input.iq.request.destroy.alternate"
        );
    }

    #[test]
    fn bad_nicks_are_errors() {
        for bad in ["", "   ", "bad\u{7}bell"] {
            assert_eq!(
                decode(Kind::Presence(pb::Presence {
                    nick: bad.into(),
                    ..presence()
                })),
                Err(ProtocolError::Nick {
                    field: "input.presence.nick".into()
                }),
                "{bad:?}"
            );
        }
        let private = pb::Private {
            from: "alice@a.test/pc".into(),
            to: String::new(),
            id: None,
            kind: pb::MessageKind::Chat.into(),
            payload_xml: String::new(),
        };
        assert_eq!(field(decode(Kind::Private(private))), "input.private.to");
    }

    #[test]
    fn unspecified_and_unknown_enums_are_errors() {
        let private = |kind: i32| pb::Private {
            from: "alice@a.test/pc".into(),
            to: "bob".into(),
            id: None,
            kind,
            payload_xml: String::new(),
        };
        assert_eq!(
            decode(Kind::Private(private(0))),
            Err(ProtocolError::Unspecified {
                field: "input.private.kind".into()
            })
        );
        assert_eq!(
            decode(Kind::Private(private(42))),
            Err(ProtocolError::UnknownEnum {
                field: "input.private.kind".into(),
                value: 42
            })
        );
        let item = pb::iq_request::Kind::AdminSet(pb::AdminSet {
            items: vec![pb::AdminItem {
                kind: Some(pb::admin_item::Kind::Affiliation(pb::AffiliationChange {
                    jid: "bob@b.test".into(),
                    affiliation: 0,
                    reason: None,
                })),
            }],
        });
        assert_eq!(
            field(decode(Kind::Iq(pb::Iq {
                from: "alice@a.test/pc".into(),
                to: None,
                id: "1".into(),
                request: Some(pb::IqRequest { kind: Some(item) }),
            }))),
            "input.iq.request.admin_set.items[0].affiliation.affiliation"
        );
    }

    fn merge(edit: impl FnOnce(&mut pb::Merge)) -> Result<Input, ProtocolError> {
        let mut m = pb::Merge {
            domain: "b.test".into(),
            began_ms: 0x1000,
            index: 3,
            at_ms: 0x1234,
            local_id: Some("split:b.test:1000:1a".into()),
            input: Some(Box::new(pb::Input {
                kind: Some(Kind::Groupchat(pb::Groupchat {
                    from: "bob@b.test/x".into(),
                    id: Some("m1".into()),
                    subject: None,
                    has_body: true,
                    payload_xml: "<body xmlns='jabber:client'>hi</body>".into(),
                    size: 40,
                })),
            })),
        };
        edit(&mut m);
        decode(Kind::Merge(Box::new(m)))
    }

    #[test]
    fn a_merge_round_trips() {
        let input = merge(|_| {}).unwrap();
        let Input::Merge(m) = &input else {
            panic!("{input:?}")
        };
        assert_eq!(
            (m.domain.as_str(), m.began, m.index, m.at),
            ("b.test", Timestamp(0x1000), 3, Timestamp(0x1234))
        );
        assert_eq!(
            m.local_id.as_ref().map(|id| id.as_str()),
            Some("split:b.test:1000:1a")
        );
        assert!(matches!(m.input, Input::Groupchat { .. }));
        assert_eq!(Input::try_from(pb::Input::from(&input)).unwrap(), input);
        assert!(
            matches!(merge(|m| m.local_id = None), Ok(Input::Merge(m)) if m.local_id.is_none())
        );
        // The sender looks through the merge.
        assert_eq!(input.sender().unwrap().to_string(), "bob@b.test/x");
    }

    #[test]
    fn merges_are_checked() {
        assert_eq!(
            merge(|m| m.input = None).unwrap_err(),
            ProtocolError::missing("input.merge.input")
        );
        let nested = merge(|m| {
            let inner = m.clone();
            m.input = Some(Box::new(pb::Input {
                kind: Some(Kind::Merge(Box::new(inner))),
            }));
        });
        assert_eq!(
            nested.unwrap_err(),
            ProtocolError::invalid("input.merge.input", "a merge cannot hold a merge")
        );
        for (bad_id, why) in [
            ("split:c.test:1000:1a", "another domain's"),
            ("split:b.test:999:1a", "another split's"),
            ("1-1a", "a master's"),
        ] {
            assert_eq!(
                merge(|m| m.local_id = Some(bad_id.into())).unwrap_err(),
                ProtocolError::invalid(
                    "input.merge.local_id",
                    "not a provisional id of this split"
                ),
                "{why}"
            );
        }
        assert_eq!(
            field(merge(|m| m.domain = "bob@b.test".into())),
            "input.merge.domain"
        );
        assert_eq!(
            field(merge(|m| m.domain = String::new())),
            "input.merge.domain"
        );
        let bad_inner = merge(|m| {
            m.input = Some(Box::new(pb::Input {
                kind: Some(Kind::Leave(pb::Leave {
                    from: "bob@b.test".into(),
                    payload_xml: String::new(),
                })),
            }))
        });
        assert_eq!(field(bad_inner), "input.merge.input.leave.from");
    }

    #[test]
    fn malformed_payload_is_an_error() {
        let err = decode(Kind::Groupchat(pb::Groupchat {
            from: "alice@a.test/pc".into(),
            id: None,
            subject: None,
            has_body: true,
            payload_xml: "<body xmlns='jabber:client'>unclosed".into(),
            size: 1,
        }))
        .unwrap_err();
        assert!(
            matches!(&err, ProtocolError::Payload { field, .. } if field == "input.groupchat.payload_xml"),
            "{err:?}"
        );
    }

    #[test]
    fn absent_history_means_no_limits() {
        let input = decode(Kind::Presence(pb::Presence {
            join: Some(pb::JoinRequest {
                password: Some("pw".into()),
                history: None,
            }),
            ..presence()
        }))
        .unwrap();
        let Input::Presence {
            join: Some(join), ..
        } = input
        else {
            panic!("{input:?}")
        };
        assert_eq!(join.password.as_deref(), Some("pw"));
        assert_eq!(join.history, HistoryRequest::default());
    }
}
