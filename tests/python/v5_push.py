"""Consumes through the official RocketMQ 5 Python client's PushConsumer.

Usage: python v5_push.py ENDPOINT TOPIC GROUP EXPECTED OUT [FAIL]
  EXPECTED  stop once this many distinct message ids were consumed with SUCCESS (or after a
            silence of 30 s, or 180 s in all)
  OUT       one JSON line per delivery: {"id", "seq", "attempt", "group", "result", "t"}
  FAIL      answer FAILURE to the first delivery of the first FAIL messages (default 0): the
            server must deliver them again, with delivery_attempt 2

Prints a summary as its last line of stdout: {"deliveries", "consumed_ids", "redelivered"}.
"""

import json
import sys
import threading
import time

from rocketmq import (ClientConfiguration, ConsumeResult, FilterExpression,
                      MessageListener, PushConsumer)

from v5_auth import credentials


class Recorder(MessageListener):
    def __init__(self, out, fail):
        self.out, self.fail = out, fail
        self.lock = threading.Lock()
        self.failed, self.consumed, self.deliveries, self.redelivered = set(), set(), 0, 0
        self.started = self.last = time.monotonic()

    def consume(self, message):
        with self.lock:
            self.deliveries += 1
            self.last = time.monotonic()
            attempt = message.delivery_attempt
            if attempt and attempt > 1:
                self.redelivered += 1
            if len(self.failed) < self.fail and message.message_id not in self.failed:
                self.failed.add(message.message_id)
                result = ConsumeResult.FAILURE
            else:
                self.consumed.add(message.message_id)
                result = ConsumeResult.SUCCESS
            self.out.write(json.dumps({
                "id": message.message_id,
                "seq": int(message.properties.get("seq", "-1")),
                "attempt": attempt,
                "group": message.message_group,
                "result": "success" if result == ConsumeResult.SUCCESS else "failure",
                "t": round(time.monotonic() - self.started, 3),
            }) + "\n")
            self.out.flush()
            return result


def main():
    endpoint, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    expected, out_path = int(sys.argv[4]), sys.argv[5]
    fail = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    with open(out_path, "w") as out:
        recorder = Recorder(out, fail)
        consumer = PushConsumer(
            ClientConfiguration(endpoint, credentials()),
            group,
            recorder,
            {topic: FilterExpression()},
        )
        consumer.startup()
        while True:
            with recorder.lock:
                done = len(recorder.consumed) >= expected
                silent = time.monotonic() - recorder.last > 30
                late = time.monotonic() - recorder.started > 180
            if done or silent or late:
                break
            time.sleep(0.1)
        consumer.shutdown()
    print(json.dumps({
        "deliveries": recorder.deliveries,
        "consumed_ids": len(recorder.consumed),
        "redelivered": recorder.redelivered,
    }))


if __name__ == "__main__":
    main()
