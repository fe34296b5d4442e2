// The live channel. Pushed fragments carry hx-swap-oob and are handed to htmx as they are.
// Log lines are the one exception, handled here: they are inserted in sequence order and
// duplicates dropped, because a page opened mid-run (or reconnecting) receives the lines it
// missed and the new ones over two paths that may arrive in either order.
(function () {
  const indicator = document.getElementById("live-indicator");
  const rooms = (document.body.dataset.liveRooms || "").split(/\s+/).filter(Boolean);
  const socket = io({ transports: ["websocket", "polling"] });

  function show(state) {
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.textContent = state;
  }

  function logBox(runId) {
    return document.getElementById("run-" + runId + "-log-lines");
  }

  function lastSeq(runId) {
    const box = logBox(runId);
    const last = box && box.lastElementChild;
    return last ? Number(last.dataset.seq) : 0;
  }

  function insertLines(runId, html) {
    const box = logBox(runId);
    if (!box) return;
    const follow = document.getElementById("log-follow");
    const incoming = document.createElement("template");
    incoming.innerHTML = html;
    for (const line of Array.from(incoming.content.querySelectorAll(".log-line"))) {
      if (document.getElementById(line.id)) continue;
      const seq = Number(line.dataset.seq);
      let before = null;
      for (let node = box.lastElementChild; node && Number(node.dataset.seq) > seq; node = node.previousElementSibling) {
        before = node;
      }
      box.insertBefore(line, before);
    }
    if (follow && follow.checked) box.scrollTop = box.scrollHeight;
  }

  socket.on("connect", () => {
    show("live");
    const joins = rooms.map((room) => new Promise((done) => {
      const runId = room.startsWith("run:") ? room.slice(4) : null;
      const request = runId ? { room: room, after: lastSeq(runId) } : room;
      socket.emit("join", request, done);
    }));
    // regions refetch what they may have missed once every room is joined
    Promise.all(joins).then(() => htmx.trigger(document.body, "live:connected"));
  });
  socket.on("disconnect", () => show("disconnected"));
  socket.on("connect_error", () => show("disconnected"));
  // A room may carry regions this page does not show (a history row on a filtered page):
  // drop those instead of letting htmx report a missing target.
  function withTargetsOnPage(html) {
    const incoming = document.createElement("template");
    incoming.innerHTML = html;
    for (const el of Array.from(incoming.content.querySelectorAll("[hx-swap-oob]"))) {
      const how = el.getAttribute("hx-swap-oob");
      const selector = how.includes(":") ? how.slice(how.indexOf(":") + 1)
        : (el.id ? "#" + CSS.escape(el.id) : null);
      if (selector && !document.querySelector(selector)) el.remove();
    }
    return incoming.innerHTML;
  }
  socket.on("fragment", (html) => htmx.swap(document.body, withTargetsOnPage(html), { swapStyle: "none" }));
  socket.on("log", (message) => insertLines(message.run, message.html));
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll(".log-lines").forEach((box) => { box.scrollTop = box.scrollHeight; });
  });
  // for tests and the curious: which transport carries the live channel
  window.nomaflowLive = { transport: () => socket.io.engine && socket.io.engine.transport.name };
})();
