// Raw TCP to a private Redis ("host:port" form): PING, close the write side, return the reply.
export default {
  async fetch(request, env) {
    const socket = await env.MY_BINDING.connect("127.20.0.50:6379");

    const writer = socket.writable.getWriter();
    await writer.write(new TextEncoder().encode("PING\r\n"));
    await writer.close();

    return new Response(socket.readable);
  },
};
