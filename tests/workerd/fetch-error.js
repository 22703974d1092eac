// fetch() to a destination that cannot be reached: the Worker returns the proxy's status and
// its RFC 9209 Proxy-Status header, as JSON.
export default {
  async fetch(request, env) {
    const response = await env.MY_BINDING.fetch("@URL@");
    const body = await response.text();
    return new Response(
      JSON.stringify({
        status: response.status,
        proxyStatus: response.headers.get("Proxy-Status"),
        body,
      }),
      { headers: { "Content-Type": "application/json" } },
    );
  },
};
