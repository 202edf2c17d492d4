//! What the peerhost answers at its own JID: service discovery that tells
//! masters it is a dmuc peerhost, where to reach it and which domain it
//! serves (XEP-0030 with an XEP-0128 form), and pings. Anything else gets
//! `service-unavailable`; errors and results are never answered.

use dmuc_protocol::disco;
use dmuc_room::Condition;
use dmuc_room::form::{Field, Form};
use dmuc_stanza::outbound::{self, Attr};
use jid::BareJid;
use minidom::Element;
use xmpp_parsers::ns;

/// What the peerhost advertises.
#[derive(Clone, Debug)]
pub struct Advertised {
    /// The peerhost's own JID (its component).
    pub peer_jid: BareJid,
    pub domain: BareJid,
    pub endpoint: Option<String>,
}

impl Advertised {
    fn form(&self) -> Form {
        let mut fields = vec![
            Field::hidden("FORM_TYPE", disco::FORM_TYPE),
            Field::text(disco::DOMAIN, "Served domain", self.domain.as_str()),
        ];
        if let Some(url) = &self.endpoint {
            fields.push(Field::text(disco::ENDPOINT, "gRPC endpoint", url));
        }
        Form {
            title: None,
            fields,
        }
    }
}

/// The answer to a stanza addressed to the peerhost itself, if any.
pub fn answer(el: &Element, advertised: &Advertised) -> Option<Element> {
    if el.name() != "iq" || !matches!(el.attr("type"), Some("get" | "set")) {
        return match el.attr("type") {
            Some("error" | "result") => None,
            _ if el.name() == "presence" => None,
            _ => outbound::error_reply(el, Condition::ServiceUnavailable, None),
        };
    }
    let query = el.children().next();
    let body = match (el.attr("type"), query) {
        (Some("get"), Some(q)) if q.is("query", ns::DISCO_INFO) && q.attr("node").is_none() => {
            Some(outbound::disco_info(
                "component",
                "generic",
                "dmuc peerhost",
                &[ns::DISCO_INFO, ns::PING, disco::FEATURE],
                Some(&advertised.form()),
            ))
        }
        (Some("get"), Some(q)) if q.is("ping", ns::PING) => None,
        _ => return outbound::error_reply(el, Condition::ServiceUnavailable, None),
    };
    Some(
        Element::builder("iq", ns::DEFAULT_NS)
            .a("type", "result")
            .a("from", el.attr("to"))
            .a("to", el.attr("from"))
            .a("id", el.attr("id"))
            .append_all(body)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advertised() -> Advertised {
        Advertised {
            peer_jid: "muc-peer.b.test".parse().unwrap(),
            domain: "b.test".parse().unwrap(),
            endpoint: Some("http://127.0.0.1:7443".into()),
        }
    }

    fn iq(kind: &str, payload: &str) -> Element {
        format!(
            "<iq xmlns='jabber:component:accept' type='{kind}' id='q' from='m@a.test/r' to='muc-peer.b.test'>{payload}</iq>"
        )
        .parse()
        .unwrap()
    }

    #[test]
    fn disco_info_advertises_the_feature_endpoint_and_domain() {
        let answer = answer(
            &iq(
                "get",
                "<query xmlns='http://jabber.org/protocol/disco#info'/>",
            ),
            &advertised(),
        )
        .unwrap();
        assert_eq!(answer.attr("type"), Some("result"));
        let text = String::from(&answer);
        assert!(text.contains(disco::FEATURE));
        assert!(text.contains(disco::FORM_TYPE));
        assert!(text.contains("http://127.0.0.1:7443"));
        assert!(text.contains("<value>b.test</value>"));
    }

    #[test]
    fn pings_are_answered_and_the_rest_refused() {
        let pong = answer(&iq("get", "<ping xmlns='urn:xmpp:ping'/>"), &advertised()).unwrap();
        assert_eq!(pong.attr("type"), Some("result"));
        let refused = answer(&iq("set", "<query xmlns='urn:x'/>"), &advertised()).unwrap();
        assert_eq!(refused.attr("type"), Some("error"));
        assert!(answer(&iq("result", ""), &advertised()).is_none());
    }
}
