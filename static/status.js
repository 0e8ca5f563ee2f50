// Keeps "time left" on the status page current without a reload (the server's text is the fallback).
(function () {
  "use strict";
  var spans = document.querySelectorAll(".time-left[data-expires]");
  function describe(seconds) {
    var span = Math.abs(seconds);
    var d = Math.floor(span / 86400), h = Math.floor((span % 86400) / 3600), m = Math.floor((span % 3600) / 60);
    var parts = [];
    if (d) parts.push(d + " d");
    if (h) parts.push(h + " h");
    if (m) parts.push(m + " min");
    var years = Math.floor(d / 365);
    var text = years ? "over " + years + " year" + (years > 1 ? "s" : "")
      : parts.length ? parts.join(" ") : "less than a minute";
    return seconds > 0 ? text + " left" : "expired " + text + " ago";
  }
  function update() {
    var now = Date.now() / 1000;
    for (var i = 0; i < spans.length; i++) {
      spans[i].textContent = describe(Math.round(parseInt(spans[i].getAttribute("data-expires"), 10) - now));
    }
  }
  if (spans.length) { update(); setInterval(update, 15000); }
})();
