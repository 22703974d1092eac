// POST a JSON body with a bearer token to a private HTTP API; a non-2xx answer is reported.
export default {
  async fetch(request, env) {
    const privateRequest = new Request(
      "http://internal-api.company.local/users",
      {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Authorization: `Bearer ${env.API_TOKEN}`,
        },
        body: JSON.stringify({
          name: "John Doe",
          email: "john@example.com",
        }),
      },
    );

    const response = await env.MY_BINDING.fetch(privateRequest);

    if (!response.ok) {
      return new Response("Failed to create user", { status: response.status });
    }

    const user = await response.json();
    return new Response(JSON.stringify(user), {
      headers: { "Content-Type": "application/json" },
    });
  },
};
