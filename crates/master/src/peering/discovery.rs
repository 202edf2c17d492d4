//! Finding a domain's peerhost by service discovery (XEP-0030, XEP-0128):
//! the domain's own server lists its items; the peerhost among them
//! advertises [`disco::FEATURE`] and a form with its endpoint and the
//! domain it serves. The questions travel over authenticated s2s, so an
//! answer from `b.test` really is `b.test`'s: that is why a peerhost found
//! this way is trusted to speak for `b.test`'s users.
//!
//! ```text
//!  master ── disco#items ──▶ b.test          ◀── items: muc-peer.b.test, upload.b.test, …
//!         ── disco#info ───▶ each item (at once) ◀── feature urn:dmuc:peering:1,
//!                                                   form: domain = b.test, endpoint = http://…
//! ```
//!
//! [`items`] and [`peerhost`] read the answers (pure); [`discover`] asks.

use std::time::Duration;

use dmuc_component::LinkHandle;
use dmuc_protocol::disco;
use jid::BareJid;
use minidom::Element;
use tracing::debug;
use xmpp_parsers::data_forms::DataForm;
use xmpp_parsers::ns;

use super::PeerTarget;
use super::iq::Requests;

/// Items asked about at most: a server lists its components, rarely more.
const MAX_ITEMS: usize = 32;

/// Asks `domain` for its peerhost, from `service` (the master's JID).
pub async fn discover(
    requests: &Requests,
    link: &LinkHandle,
    service: &BareJid,
    domain: &BareJid,
    timeout: Duration,
) -> Option<PeerTarget> {
    let query = |ns: &str| Element::builder("query", ns).build();
    let answer = requests
        .get(link, service, domain, query(ns::DISCO_ITEMS), timeout)
        .await;
    let candidates = match answer {
        Ok(el) => items(&el),
        Err(e) => {
            debug!(%domain, error = %e, "no disco#items");
            return None;
        }
    };
    let asks = candidates.iter().map(|item| async move {
        let answer = requests
            .get(link, service, item, query(ns::DISCO_INFO), timeout)
            .await
            .ok()?;
        peerhost(&answer, item, domain)
    });
    let found = futures::future::join_all(asks).await;
    found.into_iter().flatten().next()
}

/// The JIDs of a disco#items result (at most `MAX_ITEMS`, nodes skipped:
/// a peerhost is a JID of its own).
pub fn items(answer: &Element) -> Vec<BareJid> {
    if answer.attr("type") != Some("result") {
        return Vec::new();
    }
    let Some(query) = answer.get_child("query", ns::DISCO_ITEMS) else {
        return Vec::new();
    };
    query
        .children()
        .filter(|i| i.is("item", ns::DISCO_ITEMS) && i.attr("node").is_none())
        .filter_map(|i| i.attr("jid")?.parse::<BareJid>().ok())
        .filter(|j| j.node().is_none())
        .take(MAX_ITEMS)
        .collect()
}

/// The peerhost `item` is, per its disco#info `answer`, if it is one and
/// serves `domain`.
pub fn peerhost(answer: &Element, item: &BareJid, domain: &BareJid) -> Option<PeerTarget> {
    if answer.attr("type") != Some("result") {
        return None;
    }
    let query = answer.get_child("query", ns::DISCO_INFO)?;
    let has_feature = query
        .children()
        .any(|f| f.is("feature", ns::DISCO_INFO) && f.attr("var") == Some(disco::FEATURE));
    if !has_feature {
        return None;
    }
    let form = query
        .children()
        .filter(|x| x.is("x", ns::DATA_FORMS))
        .filter_map(|x| DataForm::try_from(x.clone()).ok())
        .find(|f| f.form_type() == Some(disco::FORM_TYPE))?;
    let value = |var: &str| {
        form.fields
            .iter()
            .find(|f| f.var.as_deref() == Some(var))
            .and_then(|f| f.values.first().cloned())
    };
    if value(disco::DOMAIN)?.parse::<BareJid>().ok()? != *domain {
        debug!(%item, %domain, "peerhost serves another domain");
        return None;
    }
    Some(PeerTarget {
        domain: domain.clone(),
        jid: item.clone(),
        endpoint: value(disco::ENDPOINT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    fn info(domain: &str, feature: &str) -> Element {
        parse(&format!(
            "<iq xmlns='jabber:client' type='result' from='muc-peer.b.test' id='1'>\
             <query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='component' type='generic'/>\
             <feature var='{feature}'/>\
             <x xmlns='jabber:x:data' type='result'>\
             <field var='FORM_TYPE' type='hidden'><value>{}</value></field>\
             <field var='domain'><value>{domain}</value></field>\
             <field var='endpoint'><value>http://127.0.0.1:7000</value></field>\
             </x></query></iq>",
            disco::FORM_TYPE
        ))
    }

    #[test]
    fn items_are_the_bare_domains_listed() {
        let answer = parse(
            "<iq xmlns='jabber:client' type='result' from='b.test' id='1'>\
             <query xmlns='http://jabber.org/protocol/disco#items'>\
             <item jid='muc-peer.b.test'/><item jid='upload.b.test' name='Upload'/>\
             <item jid='b.test' node='some-node'/><item jid='user@b.test'/>\
             </query></iq>",
        );
        let found: Vec<String> = items(&answer).iter().map(|j| j.to_string()).collect();
        assert_eq!(found, ["muc-peer.b.test", "upload.b.test"]);
        let error = parse("<iq xmlns='jabber:client' type='error' from='b.test' id='1'/>");
        assert!(items(&error).is_empty());
    }

    #[test]
    fn a_peerhost_needs_the_feature_and_the_domain_it_was_found_on() {
        let item: BareJid = "muc-peer.b.test".parse().unwrap();
        let b: BareJid = "b.test".parse().unwrap();
        assert_eq!(
            peerhost(&info("b.test", disco::FEATURE), &item, &b),
            Some(PeerTarget {
                domain: b.clone(),
                jid: item.clone(),
                endpoint: Some("http://127.0.0.1:7000".into()),
            })
        );
        // Listed by b.test but claiming to serve c.test: not b.test's peerhost.
        assert_eq!(peerhost(&info("c.test", disco::FEATURE), &item, &b), None);
        assert_eq!(peerhost(&info("b.test", "urn:other"), &item, &b), None);
    }
}
