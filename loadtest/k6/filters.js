// A route behind filters vs the same origin without them. TOKEN is a bearer
// token the route accepts (run.py mints it); thresholds fail the run when the
// filtered route errors or its tail latency degrades.
//
//   TARGET=http://127.0.0.1:8080 ROUTE=/chain TOKEN=... k6 run k6/filters.js
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET || 'http://127.0.0.1:8080';
const route = __ENV.ROUTE || '/plain';
const headers = __ENV.TOKEN ? { Authorization: `Bearer ${__ENV.TOKEN}` } : {};

export const options = {
  scenarios: {
    filtered: { executor: 'constant-vus', vus: Number(__ENV.VUS || 32), duration: __ENV.DURATION || '10s' },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
    http_req_duration: ['p(99)<100'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const res = http.get(`${target}${route}/x`, { headers });
  check(res, { 'status is 200': (r) => r.status === 200 });
}
