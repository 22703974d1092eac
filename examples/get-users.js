// GET a JSON list from a private HTTP API (works through a VPC Service or a VPC Network binding).
export default {
  async fetch(request, env) {
    const privateRequest = new Request(
      "http://internal-api.company.local/users",
    );
    const response = await env.MY_BINDING.fetch(privateRequest);
    const users = await response.json();

    return new Response(JSON.stringify(users), {
      headers: { "Content-Type": "application/json" },
    });
  },
};
