"""Sends NORMAL and FIFO messages through the official RocketMQ 5 Python client, unchanged.

Usage: python v5_produce.py ENDPOINT TOPIC COUNT OUT
  ENDPOINT  the cluster's v5 access point (host:port)
  TOPIC     an existing topic
  COUNT     messages to send; even ones NORMAL (tag "even", keys "k<seq>"), odd ones FIFO
            (message group "order-<seq % 50>"), each with the user property seq=<seq>
  OUT       a file written with one JSON line per message the client answered with a receipt:
            {"seq", "id", "kind", "group", "t"}

Signs with V5_ACCESS_KEY / V5_SECRET_KEY when set (v5_auth.py); a refusal of the credentials or
the permission is counted as a failed send like any other.

Failed sends (after the client's own retries) are counted and the script goes on with the next
message, as an application would. It prints a summary as its last line of stdout:
{"sent", "ok", "failed", "longest_gap_s", "errors": [first few error texts]}.
"""

import json
import sys
import time

from rocketmq import ClientConfiguration, Message, Producer

from v5_auth import credentials


def main():
    endpoint, topic, count, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    producer = Producer(ClientConfiguration(endpoint, credentials()), (topic,))
    producer.startup()
    ok, failed, errors = 0, 0, []
    last_ok = time.monotonic()
    longest_gap = 0.0
    with open(out_path, "w") as out:
        for seq in range(count):
            message = Message()
            message.topic = topic
            message.body = ("message %d" % seq).encode()
            message.add_property("seq", str(seq))
            group = None
            if seq % 2 == 0:
                message.tag = "even"
                message.keys = "k%d" % seq
            else:
                group = "order-%d" % (seq % 50)
                message.message_group = group
            try:
                receipt = producer.send(message)
            except Exception as err:  # the client's own retries are spent
                failed += 1
                if len(errors) < 5:
                    errors.append(str(err)[:300])
                continue
            now = time.monotonic()
            longest_gap = max(longest_gap, now - last_ok)
            last_ok = now
            ok += 1
            out.write(json.dumps({
                "seq": seq,
                "id": receipt.message_id,
                "kind": "fifo" if group else "normal",
                "group": group,
                "t": now,
            }) + "\n")
            out.flush()
    producer.shutdown()
    print(json.dumps({
        "sent": count,
        "ok": ok,
        "failed": failed,
        "longest_gap_s": round(longest_gap, 3),
        "errors": errors,
    }))


if __name__ == "__main__":
    main()
