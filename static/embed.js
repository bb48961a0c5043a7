/*
 * The embeddable live view, /embed/workspaces/{id}: a <runwire-feed> for a wall screen or
 * an iframe in another tool. Read-only, no cookies: the token comes from the address —
 *   /embed/workspaces/3#token=…&refresh_url=https://app.example.com/runwire/embed-token
 * (the fragment never reaches a server or a log; `?token=` works too) — and is sent as a
 * bearer token. With `refresh_url`, a refused or expired token is exchanged there for a new
 * one (see runwire-elements.js), so the view runs for weeks.
 */
(function () {
  "use strict";
  var hash = new URLSearchParams(location.hash.slice(1));
  var query = new URLSearchParams(location.search);
  var pick = function (name) { return hash.get(name) || query.get(name); };
  var token = pick("token") || query.get("access_token");
  var match = location.pathname.match(/\/embed\/workspaces\/([^/]+)\/?$/);
  var feed = document.querySelector("runwire-feed");
  if (!token || !match) {
    document.getElementById("missing").hidden = false;
    return;
  }
  // Where runwire answers: this page's own prefix (it may sit behind a path).
  feed.setAttribute("url", location.origin + location.pathname.slice(0, match.index));
  if (pick("refresh_url")) feed.setAttribute("refresh-url", pick("refresh_url"));
  feed.token = token;
  feed.setAttribute("workspace", decodeURIComponent(match[1]));
  feed.hidden = false;
})();
