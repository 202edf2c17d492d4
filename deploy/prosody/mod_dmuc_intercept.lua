-- mod_dmuc_intercept: hands this domain's users' stanzas for chosen remote
-- MUC services to the local dmuc peerhost, instead of sending them over
-- s2s. The peerhost forwards them to the service's master over its own
-- link, and keeps the rooms going for local users when that master cannot
-- be reached (split mode).
--
-- Enable it on the VirtualHost whose users are intercepted:
--
--   modules_enabled = { ..., "dmuc_intercept" }
--   dmuc_intercept = { ["conference.a.example"] = "muc-peer.example.org" }
--   plugin_paths = { "/usr/share/dmuc/prosody" }  -- where this file lives
--
-- Keys are remote services, values the local peerhost's component. Only
-- stanzas that local users send themselves (c2s) are intercepted; replies
-- and anything else from the real service still arrive over s2s, so
-- declaring the remote service as a local component (the other way to
-- intercept) and its side effects are not needed: that would make this
-- server refuse s2s from the real service, as "a host we serve".
--
-- If the peerhost is not connected, users get remote-server-timeout from
-- the component, as for any component that is down.

local jid_split = require "util.jid".split;

local intercept = module:get_option("dmuc_intercept", {});

local function kind(to)
	local node, _, resource = jid_split(to);
	if resource then
		return "full";
	elseif node then
		return "bare";
	end
	return "host";
end

module:hook("route/remote", function (event)
	local component = intercept[event.to_host];
	local origin = event.origin;
	if not component or not origin or origin.type ~= "c2s" then
		return; -- not ours: s2s as usual
	end
	local host = prosody.hosts[component];
	if not host then
		module:log("error", "dmuc_intercept: %s is not a component of this server", component);
		return;
	end
	local stanza = event.stanza;
	-- mod_component on that host sends it to the peerhost as it is, with
	-- its original from and to.
	return host.events.fire_event(stanza.name .. "/" .. kind(stanza.attr.to), {
		origin = origin, stanza = stanza,
	});
end, 100);
