# workerd configuration: one Worker whose `env.MY_BINDING` is an Underpass binding.
#
# Underpass serves each binding as an HTTP/1.1 forward proxy on the edge's loopback; workerd
# reaches it as an `external` service with `http = (style = proxy)`, so `fetch()` arrives in
# absolute form (`GET http://host/path`) and `connect()` as `CONNECT host:port`.
#
# Replace the placeholders, then run:  workerd serve config.capnp
#   @BINDING_ADDR@   the binding's listener on the edge, e.g. 127.0.0.1:8889
#   @WORKER_SCRIPT@  the Worker module, e.g. ../get-users.js (relative to this file)
#   @LISTEN_ADDR@    where workerd serves the Worker, e.g. 127.0.0.1:8787
#   @API_TOKEN@      the value of env.API_TOKEN (used by post-user.js)
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "vpc", external = (address = "@BINDING_ADDR@", http = (style = proxy))),
  ],
  sockets = [
    (name = "http", address = "@LISTEN_ADDR@", http = (), service = "main"),
  ],
);

const worker :Workerd.Worker = (
  modules = [
    (name = "worker", esModule = embed "@WORKER_SCRIPT@"),
  ],
  compatibilityDate = "2024-09-23",
  bindings = [
    (name = "MY_BINDING", service = "vpc"),
    (name = "API_TOKEN", text = "@API_TOKEN@"),
  ],
);
