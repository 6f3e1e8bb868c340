// Cache hits at a fixed arrival rate, so every cache is measured under the
// same load and latencies compare. Each response must be the cached object.
// Thresholds fail the run (exit 99) on errors or a degraded tail.
//
//   TARGET=http://127.0.0.1:8080 RATE=2000 SIZE=1024 DURATION=10s k6 run k6/cache-hit.js
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET || 'http://127.0.0.1:8080';
const size = Number(__ENV.SIZE || 1024);

export const options = {
  scenarios: {
    hits: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 2000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '10s',
      preAllocatedVUs: 64,
      maxVUs: 256,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
    http_req_duration: ['p(99)<50'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const res = http.get(`${target}/obj`);
  check(res, {
    'status is 200': (r) => r.status === 200,
    'body is the cached object': (r) => r.body && r.body.length === size,
  });
}
