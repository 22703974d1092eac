// Fetch from a private HTTPS origin: TLS to the origin is made by the connector.
export default {
  async fetch(request, env) {
    const privateRequest = new Request("https://127.20.0.50/api/data");
    const response = await env.MY_BINDING.fetch(privateRequest);

    return response;
  },
};
