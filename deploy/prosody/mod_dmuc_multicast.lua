-- mod_dmuc_multicast: XEP-0033 multicast for the dmuc master.
--
-- The master sends one stanza per room event, addressed to this host with
-- an <addresses/> list of every recipient (bcc); this module routes a copy
-- to each, exactly as Prosody's own mod_muc does for its occupants. Without
-- it, each delivery crosses the component link as a stanza of its own, and
-- parsing those costs the server about twice what mod_muc's fan-out does.
--
-- Enable it on the VirtualHost the MUC service belongs to:
--
--   modules_enabled = { ..., "dmuc_multicast" }
--   dmuc_multicast_senders = { "conference.example.org" }
--   plugin_paths = { "/usr/share/dmuc/prosody" }  -- where this file lives
--
-- Only the listed components may multicast; anyone else gets forbidden, so
-- the module cannot be used to amplify spam.
--
-- Read size: Prosody reads every connection 4 KiB per event-loop turn
-- (network_default_read_size), which suits clients but throttles the one
-- socket that carries a whole room's traffic: a message to 1,000
-- occupants is ~50 KiB of multicast, a dozen turns of a loop that is busy
-- writing to those occupants, so at 10 room messages/s Prosody drained the
-- component socket at ~400 KB/s of the ~500 KB/s sent, and deliveries
-- fell seconds behind. So the first multicast from a sender raises the
-- read size of its connection (dmuc_multicast_read_size, default 256 KiB;
-- 0 leaves it alone).

local st = require "util.stanza";
local jid_prep = require "util.jid".prep;

local xmlns_address = "http://jabber.org/protocol/address";
local senders = module:get_option_set("dmuc_multicast_senders", {});
local read_size = module:get_option_number("dmuc_multicast_read_size", 256 * 1024);

module:add_feature(xmlns_address);

local function expand(event)
	local origin, stanza = event.origin, event.stanza;
	local addresses = stanza:get_child("addresses", xmlns_address);
	if not addresses then
		return; -- not a multicast: leave it to the usual handlers
	end
	if origin.type ~= "component" or not senders:contains(origin.host) then
		module:log("warn", "Refused multicast from %s", tostring(origin.host or origin.full_jid));
		if stanza.attr.type ~= "error" then
			origin.send(st.error_reply(stanza, "auth", "forbidden", "Multicast is reserved for the MUC service"));
		end
		return true;
	end
	if not origin.dmuc_read_size and read_size > 0 then
		origin.dmuc_read_size = read_size;
		local conn = origin.conn;
		if conn and conn.set_mode then
			conn:set_mode(read_size);
			module:log("debug", "Reading %s %d bytes at a time", origin.host, read_size);
		end
	end
	local recipients = {};
	for address in addresses:childtags("address", xmlns_address) do
		local jid = address.attr.type == "bcc" and jid_prep(address.attr.jid);
		if not jid then
			origin.send(st.error_reply(stanza, "modify", "bad-request", "Only bcc addresses with a JID"));
			return true;
		end
		recipients[#recipients + 1] = jid;
	end
	stanza:remove_children("addresses", xmlns_address);
	-- Like mod_muc: one stanza object, readdressed for each recipient.
	for _, jid in ipairs(recipients) do
		stanza.attr.to = jid;
		module:send(stanza, origin);
	end
	return true;
end

module:hook("message/host", expand, 10);
module:hook("presence/host", expand, 10);
