// connect() to a destination the connector refuses: workerd's connect() itself does not throw
// on a non-2xx CONNECT answer, `socket.opened` rejects instead. The Worker reports which.
export default {
  async fetch(request, env) {
    let socket;
    try {
      socket = env.MY_BINDING.connect("@DESTINATION@");
    } catch (e) {
      return new Response(`connect() threw: ${e}`, { status: 500 });
    }
    try {
      await socket.opened;
    } catch (e) {
      return new Response(`socket.opened rejected: ${e.message}`, { status: 502 });
    }
    await socket.close();
    return new Response("socket opened", { status: 200 });
  },
};
