// Plain proxying of a small response: N virtual users in a closed loop,
// each checking status and body. Thresholds fail the run (exit 99) when the
// proxy errors or its tail latency degrades.
//
//   TARGET=http://127.0.0.1:8080 VUS=32 DURATION=10s k6 run k6/proxy-small.js
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET || 'http://127.0.0.1:8080';

export const options = {
  scenarios: {
    small: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || 32),
      duration: __ENV.DURATION || '10s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
    http_req_duration: ['p(99)<100'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
  discardResponseBodies: false,
};

export default function () {
  const res = http.get(`${target}/small`, { headers: { 'x-request-id': `k6-${__VU}-${__ITER}` } });
  check(res, {
    'status is 200': (r) => r.status === 200,
    'body is the origin payload': (r) => r.body && r.body.startsWith('hello from origin'),
  });
}
