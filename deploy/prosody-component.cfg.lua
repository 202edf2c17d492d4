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
