// A JIT workload for the e2e suite `jit`: burns CPU in hotFunction, called from outer, for argv[2] ms.
function hotFunction(n) {
  let acc = 0;
  for (let i = 0; i < n; i++) acc = (acc * 31 + i) % 1000003;
  return acc;
}
function outer() { return hotFunction(200000); }
const until = Date.now() + Number(process.argv[2] || 5000);
let sink = 0;
while (Date.now() < until) sink += outer();
console.log(sink > 0 ? "done" : "zero");
