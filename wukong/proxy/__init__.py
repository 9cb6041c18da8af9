"""The fan-out proxy: starts a wide fan-out's executors with many invocations in flight.

Invoking a Lambda function costs about 50 ms, so an executor that starts
hundreds of dependents one after another is the slow part of a wide fan-out.
When a finished task has at least ``max_task_fanout`` dependents to start
elsewhere, its executor sends them all to the proxy in one request and the
proxy starts them with up to ``max_in_flight`` invocations at once.

Protocol (``frames``).  One TCP connection carries any number of request/reply frames::

    frame  = !I n | MAC of n (32 bytes) | MAC of n and body (32 bytes) | body (n bytes)
    body   = !I header length | header (JSON) | blob | child invocations

The length is authenticated before the body is read (``frames``); the
server caps connections and closes idle and half-sent ones (``server``).

A request's header is ``{"job", "claim", "route", "tid", "children": [[size,
inline], ...]}``.  The parent's output ``blob`` travels once: each child
invocation is encoded without it, and the proxy puts ``{tid: blob}`` back into
those flagged ``inline``.  ``route`` says where the invocations go:
``{"backend": "local", "store", "queue"}`` (an RPUSH to a local cluster's
queue) or ``{"backend": "lambda", "config"}`` (asynchronous invocations of the
function, through ``wukong.backends.aws_lambda``'s invoker: same events, spills,
retries and failure reports as an executor invoking directly).  The reply is
``{"ok": true, "n": N}`` once every invocation is durably handed over, or
``{"ok": false, "error": "..."}``.  A frame whose HMAC does not match, or that
cannot be parsed, gets an error reply; the service keeps serving.

Exactly once.  Before calling the proxy the executor has already stored the
parent's output and emitted its count of invocations (``i=len(invs)``), so
either the proxy or the executor -- never both, never neither -- must start
them.  Each request carries a fresh ``claim`` name; whoever adds it first to
the job's claims set owns the fan-out.  The local route claims and pushes in
one Lua call (``proxy_push.lua``), so it is exact.  The lambda route invokes
first and claims last (a proxy dying half-way must not leave a claim behind),
so an executor that gives up on a slow proxy may duplicate invocations, which
wukong tolerates as it tolerates Lambda's own repeated deliveries.  The claims
set is the job's ``parts`` registry, which the client already deletes with the
job; a claim names no key, so deleting it as a part does nothing.

Deployment: ``LocalCluster(use_local_proxy=True)`` runs one as a child
process; ``wukong proxy --port P`` runs one on a VM (``proxy/README.md``); the
shared secret comes from ``WUKONG_PROXY_SECRET``.

Modules: ``frames`` (the wire), ``client`` (the executor's side), ``server``
(the service), ``local`` (a child-process proxy and the cluster's options).
Importing this package imports none of them.
"""
