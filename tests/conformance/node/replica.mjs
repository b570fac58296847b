// Drive an embedded replica of @libsql/client through a plan of steps (see
// tests/support/replica_driver.py for the plan's shape): node replica.mjs PLAN_JSON.
import { createClient } from "@libsql/client";

const plan = JSON.parse(process.argv[2]);
const out = [];
let client;
try {
  client = createClient({ url: `file:${plan.file}`, syncUrl: plan.url, authToken: plan.token });
  for (const step of plan.steps) {
    if (step.sync) {
      await client.sync();
      out.push("synced");
    } else if (step.query) {
      const rs = await client.execute(step.query);
      out.push(rs.rows.map((row) => Array.from(row, (v) => (typeof v === "bigint" ? Number(v) : v))));
    } else if (step.exec) {
      await client.execute(step.exec);
      out.push("done");
    } else if (step.tx) {
      const tx = await client.transaction("write");
      for (const sql of step.tx) await tx.execute(sql);
      await tx.commit();
      out.push("done");
    }
  }
} catch (err) {
  out.push({ error: `${err.name}: ${err.message}` });
} finally {
  client?.close();
}
console.log(JSON.stringify(out));
