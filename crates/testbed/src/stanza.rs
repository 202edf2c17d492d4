//! Namespaces and small read-only helpers to inspect stanzas.

use minidom::Element;

/// `jabber:client`.
pub const NS_CLIENT: &str = "jabber:client";
/// XEP-0045 join element.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// XEP-0045 occupant payloads (status codes, items).
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0045 moderator/admin IQs.
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
/// XEP-0045 owner IQs (configuration, destroy).
pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0030 info.
pub const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0030 items.
pub const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
/// XEP-0004 data forms.
pub const NS_DATA: &str = "jabber:x:data";
/// XEP-0203 delayed delivery.
pub const NS_DELAY: &str = "urn:xmpp:delay";
/// XEP-0359 stanza-id / origin-id.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0421 occupant-id.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0199 ping.
pub const NS_PING: &str = "urn:xmpp:ping";
/// RFC 6120 stanza error conditions.
pub const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// Escapes text for use in XML text or a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The bare part of a JID string (`room@service/nick` → `room@service`).
pub fn bare(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(b, _)| b)
}

/// The resource part of a JID string, if any.
pub fn resource(jid: &str) -> Option<&str> {
    jid.split_once('/').map(|(_, r)| r)
}

/// The value of attribute `name`, or `""`.
pub fn attr<'a>(el: &'a Element, name: &'a str) -> &'a str {
    el.attr(name).unwrap_or("")
}

/// The `from` attribute, or `""`.
pub fn from(el: &Element) -> &str {
    attr(el, "from")
}

/// `true` for `<presence>` of any type.
pub fn is_presence(el: &Element) -> bool {
    el.name() == "presence"
}

/// `true` for `<message>` of any type.
pub fn is_message(el: &Element) -> bool {
    el.name() == "message"
}

/// `true` for `<iq>` of any type.
pub fn is_iq(el: &Element) -> bool {
    el.name() == "iq"
}

/// The `type` attribute, or `""`.
pub fn stanza_type(el: &Element) -> &str {
    attr(el, "type")
}

/// `true` if the stanza comes from `room` itself or one of its occupants.
pub fn is_from_room(el: &Element, room: &str) -> bool {
    bare(from(el)) == room
}

/// The `<x xmlns='…muc#user'/>` payload.
pub fn muc_user(el: &Element) -> Option<&Element> {
    el.get_child("x", NS_MUC_USER)
}

/// The XEP-0045 status codes in the `muc#user` payload, in document order.
pub fn status_codes(el: &Element) -> Vec<u16> {
    muc_user(el)
        .into_iter()
        .flat_map(|x| x.children())
        .filter(|c| c.is("status", NS_MUC_USER))
        .filter_map(|c| c.attr("code")?.parse().ok())
        .collect()
}

/// `true` if the `muc#user` payload carries status `code`.
pub fn has_status(el: &Element, code: u16) -> bool {
    status_codes(el).contains(&code)
}

/// The `<item/>` of the `muc#user` payload.
pub fn muc_item(el: &Element) -> Option<&Element> {
    muc_user(el)?.get_child("item", NS_MUC_USER)
}

/// `(affiliation, role)` of the `muc#user` item, `("", "")` if absent.
pub fn affiliation_role(el: &Element) -> (&str, &str) {
    muc_item(el).map_or(("", ""), |i| (attr(i, "affiliation"), attr(i, "role")))
}

/// `(type, condition)` of a stanza's `<error/>`.
pub fn error_condition(el: &Element) -> Option<(&str, &str)> {
    let error = el
        .get_child("error", NS_CLIENT)
        .or_else(|| el.children().find(|c| c.name() == "error"))?;
    let condition = error
        .children()
        .find(|c| c.ns() == NS_STANZAS && c.name() != "text")?;
    Some((attr(error, "type"), condition.name()))
}

/// `true` if `el` is an error stanza with this condition.
pub fn is_error(el: &Element, condition: &str) -> bool {
    stanza_type(el) == "error" && error_condition(el).is_some_and(|(_, c)| c == condition)
}

/// The text of the first child `name` in `jabber:client`.
pub fn child_text(el: &Element, name: &str) -> Option<String> {
    el.get_child(name, NS_CLIENT).map(Element::text)
}

/// The message body, if any.
pub fn body(el: &Element) -> Option<String> {
    child_text(el, "body")
}

/// `true` for a subject message: a `<subject/>` and no `<body/>`.
pub fn is_subject_message(el: &Element) -> bool {
    is_message(el) && el.has_child("subject", NS_CLIENT) && !el.has_child("body", NS_CLIENT)
}

/// The XEP-0203 `<delay/>` of the stanza.
pub fn delay(el: &Element) -> Option<&Element> {
    el.get_child("delay", NS_DELAY)
}

/// The ids of the XEP-0359 `<stanza-id/>`s with `by == by`.
pub fn stanza_ids<'a>(el: &'a Element, by: &str) -> Vec<&'a str> {
    el.children()
        .filter(|c| c.is("stanza-id", NS_SID) && attr(c, "by") == by)
        .map(|c| attr(c, "id"))
        .collect()
}

/// The XEP-0359 `<origin-id/>` id.
pub fn origin_id(el: &Element) -> Option<&str> {
    el.get_child("origin-id", NS_SID)?.attr("id")
}

/// The XEP-0421 occupant id.
pub fn occupant_id(el: &Element) -> Option<&str> {
    el.get_child("occupant-id", NS_OCCUPANT_ID)?.attr("id")
}

/// The `var`s of `<feature/>`s in a disco#info result.
pub fn disco_features(el: &Element) -> Vec<String> {
    el.get_child("query", NS_DISCO_INFO)
        .into_iter()
        .flat_map(|q| q.children())
        .filter(|c| c.is("feature", NS_DISCO_INFO))
        .map(|c| attr(c, "var").to_owned())
        .collect()
}

/// `(category, type)` of each `<identity/>` in a disco#info result.
pub fn disco_identities(el: &Element) -> Vec<(String, String)> {
    el.get_child("query", NS_DISCO_INFO)
        .into_iter()
        .flat_map(|q| q.children())
        .filter(|c| c.is("identity", NS_DISCO_INFO))
        .map(|c| (attr(c, "category").to_owned(), attr(c, "type").to_owned()))
        .collect()
}

/// The first data form (`jabber:x:data`) anywhere below `el`.
pub fn find_form(el: &Element) -> Option<&Element> {
    if el.is("x", NS_DATA) {
        return Some(el);
    }
    el.children().find_map(find_form)
}

/// The values of field `var` in a data form.
pub fn form_values(form: &Element, var: &str) -> Option<Vec<String>> {
    let field = form
        .children()
        .find(|c| c.is("field", NS_DATA) && attr(c, "var") == var)?;
    Some(
        field
            .children()
            .filter(|c| c.is("value", NS_DATA))
            .map(Element::text)
            .collect(),
    )
}

/// The `var`s of every field of a data form.
pub fn form_vars(form: &Element) -> Vec<String> {
    form.children()
        .filter(|c| c.is("field", NS_DATA))
        .filter_map(|c| c.attr("var").map(str::to_owned))
        .collect()
}

/// A one-line rendering of a stanza, for logs and error dumps.
pub fn show(el: &Element) -> String {
    String::from(el)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Element {
        s.parse().unwrap()
    }

    #[test]
    fn reads_status_codes_and_items() {
        let p = parse(
            "<presence xmlns='jabber:client' from='r@m/n'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <item affiliation='owner' role='moderator'/><status code='110'/><status code='201'/></x></presence>",
        );
        assert_eq!(status_codes(&p), vec![110, 201]);
        assert_eq!(affiliation_role(&p), ("owner", "moderator"));
        assert!(is_from_room(&p, "r@m"));
        assert_eq!(resource(from(&p)), Some("n"));
    }

    #[test]
    fn reads_error_conditions() {
        let e = parse(
            "<presence xmlns='jabber:client' type='error'><error type='auth'>\
             <not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>x</text></error></presence>",
        );
        assert_eq!(error_condition(&e), Some(("auth", "not-authorized")));
        assert!(is_error(&e, "not-authorized"));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &apos;b&apos;&gt;");
    }
}
