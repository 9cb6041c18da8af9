"""The simulator's model of AWS Lambda and Redis: its parameters and where they come from.

Every number the simulator uses is a field of ``Model``; ``SOURCES`` says where
each default comes from.  ``Model.aws()`` is the AWS default; ``Model.local``
describes a ``wukong lambda-local`` endpoint on this machine (for validation),
with parameters measured here (``bench.simulate.calibrate``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Model:
    # -- Lambda -----------------------------------------------------------------------
    concurrency: int = 1000  # account concurrency limit (the function's share)
    burst: int = 1000  # concurrent executions a function may add ...
    burst_every_s: float = 10.0  # ... per this many seconds
    cold_start_s: float = 0.8  # a new execution environment, up to the handler's first line
    warm_start_s: float = 0.015  # a warm environment takes an event off the queue
    invoke_latency_s: float = 0.025  # an Event Invoke call, request to 202 Accepted
    queued_after_s: float | None = None  # request to its event queued for an environment (None: at the 202)
    invoke_cpu_s: float = 0.0002  # invoker CPU per Invoke (lean invoker; boto3: ~0.0013)
    invoke_in_flight: int = 64  # an invoker's requests in flight (lean invoker connections)
    tree_start_s: float = 0.05  # the real code's estimate of a tree node's start, for its branching
    bandwidth_Bps: float = 75e6  # per execution environment, each direction
    memory_mb: int = 3008  # priced by wukong.cost (us-east-1 x86_64 rates)
    # -- Redis ------------------------------------------------------------------------
    redis_rtt_s: float = 0.0005  # client <-> server round trip in one VPC
    shard_ops_per_s: float = 100_000  # commands a shard serves per second
    shard_Bps: float = 1.25e9  # bytes a shard takes in per second (10 Gbit/s) ...
    shard_out_Bps: float = 1.25e9  # ... and sends per second (full duplex)
    kvs_shards: int = 1
    # -- the executor's own CPU ---------------------------------------------------------
    serialize_Bps: float = 2e9  # pickle-5 of numpy buffers (wukong.serialization.dumps_parts) ...
    deserialize_Bps: float = 2e9  # ... and back (serialization.loads)
    task_speed: float = 1.0  # task durations of the profile are divided by this
    invocation_cpu_s: float = 0.003  # an executor's CPU per invocation besides its tasks (decode, set-up)
    roundtrip_cpu_s: float = 0.0001  # an executor's CPU per Redis round trip (pipeline encode/parse)
    task_cpu_s: float = 0.0  # an executor's CPU per task besides the task's own (its bookkeeping)
    cores: float | None = None  # CPUs shared by all executors (None: each environment has its own)
    warm_pool: int = 0  # environments already warm when the job starts

    def with_(self, **changes: object) -> Model:
        return replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> dict:
        return asdict(self)

    @classmethod
    def local(cls, workers: int, latency: float, cores: float, **changes: object) -> Model:
        """A ``wukong lambda-local`` endpoint with ``workers`` warm workers and ``latency`` per Invoke,
        on a machine with ``cores`` cores shared by all (measure the rest: ``bench.simulate.calibrate``).
        Moving bytes over loopback is the executor's CPU, so on shared cores it is contended too."""
        return cls(
            concurrency=workers,
            burst=10**9,
            cold_start_s=0.0,
            warm_pool=workers,
            invoke_latency_s=latency,
            queued_after_s=0.0,  # lambda-local queues an event as it reads it, and answers ``latency`` later
            bandwidth_Bps=2e9,
            cores=cores,
        ).with_(**changes)

    @classmethod
    def aws(cls, concurrency: int = 1000, **changes: object) -> Model:
        return cls(concurrency=concurrency).with_(**changes)


SOURCES = {
    "concurrency": "AWS Lambda quotas: 1,000 concurrent executions per Region by default, raisable "
    "(docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html); the 10,000- and 100,000-way "
    "predictions assume a raised quota",
    "burst": "AWS Lambda scaling behaviour since Nov 2023: each function scales by 1,000 concurrent "
    "executions every 10 seconds (docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html)",
    "burst_every_s": "same page as burst",
    "cold_start_s": "Python 3.11 cold starts with numpy+dask-sized packages: 0.5-1.5 s (AWS Compute Blog, "
    "'Operating Lambda: Performance optimization', and Wang et al., ATC'18 'Peeking behind the curtains "
    "of serverless platforms'); 0.8 s assumed",
    "warm_start_s": "warm invocation overhead, tens of ms at most (Wang et al. ATC'18); 15 ms assumed",
    "invoke_latency_s": "Event Invoke API round trip from inside a Region: ~20-40 ms (Wukong paper, "
    "Carver et al., SoCC'20, Fig. on invoker latency); 25 ms assumed",
    "queued_after_s": "AWS: an Event invoke's 202 Accepted means the event is queued, so None (at "
    "invoke_latency_s); lambda-local: 0, it queues the event as soon as it has read the request and "
    "sleeps its injected latency before answering (wukong.lambda_local.server)",
    "invoke_cpu_s": "measured here: python -m bench.fanout (lean invoker 0.18-0.21 ms, boto3 1.16-1.33 ms)",
    "invoke_in_flight": "wukong.backends.aws_lambda.lambda_config(connections=64)",
    "tree_start_s": "wukong.backends.aws_lambda.TREE_START_S",
    "bandwidth_Bps": "per-function network throughput ~75 MB/s (Klimovic et al., Pocket, OSDI'18; "
    "Wang et al. ATC'18 measured 28-80 MB/s depending on memory size); lambda-local: the "
    "executor's CPU seconds per byte of a SET and a GET of a 4.5 MB value through wukong.store.Batch, "
    "measured here (bench.simulate.calibrate_bytes; the Redis server's side is shard_Bps)",
    "memory_mb": "wukong's default function size (LocalCluster(memory_mb=3008)); priced with "
    "wukong.cost.RATES (aws.amazon.com/lambda/pricing, us-east-1)",
    "redis_rtt_s": "ElastiCache: sub-millisecond latency in one AZ (aws.amazon.com/elasticache/redis); 0.5 ms",
    "shard_ops_per_s": "redis.io/docs/management/optimization/benchmarks: ~100k-200k ops/s per "
    "single-threaded server for small commands; 100k assumed (Lua fan-ins cost more than GET)",
    "shard_Bps": "cache.r6g.xlarge and larger: up to 10 Gbit/s (aws.amazon.com/elasticache/pricing); "
    "lambda-local: measured here (bench.simulate.calibrate_bytes: the Redis server's CPU seconds per SET "
    "of a 4.5 MB value, sent as the executor sends it)",
    "shard_out_Bps": "as shard_Bps, each direction (full duplex); lambda-local: measured here (GET of the same values)",
    "kvs_shards": "the cluster's configuration",
    "serialize_Bps": "pickle protocol 5 of numpy arrays is a memory copy: ~2 GB/s assumed on Lambda; "
    "lambda-local: measured here (bench.simulate.calibrate_bytes: CPU seconds of serialization.dumps_parts "
    "of a 4.5 MB block)",
    "deserialize_Bps": "as serialize_Bps (serialization.loads of the same block)",
    "invocation_cpu_s": "3 ms assumed on Lambda; lambda-local: measured here (bench.simulate.calibrate: the "
    "CPU seconds of the workers, the endpoint, Redis and the client over jobs of 200 one-task invocations, "
    "per invocation: on lambda-local all of them share the executors' cores)",
    "task_cpu_s": "0 on Lambda (not modelled there yet); lambda-local: measured here (bench.simulate.calibrate: "
    "the CPU seconds of a chain of 200 trivial tasks run by one invocation, less one invocation's, per task)",
    "roundtrip_cpu_s": "redis-py pipeline of a few commands: ~0.1 ms of CPU (measured here with a PING loop)",
    "cores": "None on Lambda (each environment has its vCPUs); the machine's cores for lambda-local",
    "warm_pool": "0 on Lambda (a job's first executors start cold); lambda-local's workers are warm",
    "task_speed": "task durations come from a local run (wukong.simulate.profile): 1.0 = a Lambda core "
    "as fast as the recording machine's",
}
