-- Attach the dmuc master to Prosody as an external component (XEP-0114).
-- Add to /etc/prosody/prosody.cfg.lua (or conf.d/), then `prosodyctl reload`.

-- Listen for components on loopback only.
component_interfaces = { "127.0.0.1" }
component_ports = { 5347 }

-- Nagle's algorithm adds up to 40 ms per stanza on the component link.
network_settings = { nagle = false }

Component "conference.example.org"
    component_secret = "change me" -- the same as [component] secret
    -- The master sends only from its own domain: keep validation on.

-- Let the master multicast (XEP-0033): one stanza per room event, fanned out
-- by Prosody. Copy deploy/prosody/mod_dmuc_multicast.lua to plugin_paths.
plugin_paths = { "/usr/share/dmuc/prosody" }
VirtualHost "example.org"
    modules_enabled = { "dmuc_multicast" } -- in addition to your usual modules
    dmuc_multicast_senders = { "conference.example.org" }
    -- Bytes Prosody reads from the master's connection per loop turn (its
    -- default, 4 KiB, throttles a busy master); 0 leaves Prosody's default.
    dmuc_multicast_read_size = 262144

-- On a domain that runs a dmuc peerhost (slaves of remote rooms for this
-- domain's users): the peerhost speaks as those rooms to local users, so
-- its component must be allowed to send from foreign addresses. Prosody
-- lists it in the domain's disco#items, where masters find it.
Component "muc-peer.example.org"
    component_secret = "change me" -- the peerhost's [component] secret
    validate_from_addresses = false

-- Optional, on that same domain: hand this domain's users' stanzas for a
-- remote dmuc service to the local peerhost instead of sending them over
-- s2s (split mode: the peerhost then forwards them to the master over its
-- own link, and knows when that link is cut). The peerhost needs a
-- [[shadow]] entry for the service. Copy deploy/prosody/mod_dmuc_intercept.lua
-- to plugin_paths.
VirtualHost "example.org"
    modules_enabled = { "dmuc_intercept" } -- in addition to your usual modules
    dmuc_intercept = { ["conference.a.example"] = "muc-peer.example.org" }
