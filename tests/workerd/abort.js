// AbortController abort of a pending fetch. The abort is ordered, not timed: the slow fetch
// goes out first, then a second fetch to the same origin (`/gate`) that the origin answers only
// once the slow request has arrived there; then the Worker aborts and reports what the slow
// fetch did.
export default {
  async fetch(request, env) {
    const controller = new AbortController();
    const slow = env.MY_BINDING.fetch("@ORIGIN@/slow", { signal: controller.signal }).then(
      (response) => `slow fetch resolved with ${response.status}`,
      (error) => `slow fetch rejected: ${error.name}`,
    );
    const gate = await env.MY_BINDING.fetch("@ORIGIN@/gate");
    const gateText = await gate.text();
    controller.abort();
    const outcome = await slow;
    return new Response(`gate: ${gateText}; ${outcome}`);
  },
};
