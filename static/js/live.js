// The live channel: pushed HTML fragments are swapped in by id (hx-swap-oob), nothing more.
// This script is an island because a socket has no hypermedia form; keep it this small.
(function () {
  const indicator = document.getElementById("live-indicator");
  const rooms = (document.body.dataset.liveRooms || "").split(/\s+/).filter(Boolean);
  const socket = io({ transports: ["websocket", "polling"] });

  function show(state) {
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.textContent = state;
  }

  socket.on("connect", () => {
    show("live");
    rooms.forEach((room) => socket.emit("join", room));
    htmx.trigger(document.body, "live:connected");  // regions refetch what they missed
  });
  socket.on("disconnect", () => show("disconnected"));
  socket.on("connect_error", () => show("disconnected"));
  socket.on("fragment", (html) => htmx.swap(document.body, html, { swapStyle: "none" }));
  // for tests and the curious: which transport carries the live channel
  window.nomaflowLive = { transport: () => socket.io.engine && socket.io.engine.transport.name };
})();
