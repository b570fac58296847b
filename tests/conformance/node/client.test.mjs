// @libsql/client (pinned in package.json) against a real Shoal node, over HTTP and WebSocket.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { createClient, LibsqlError } from "@libsql/client";

import { dbUrl, newDatabase, newToken } from "./support.mjs";

for (const transport of ["http", "ws"]) {
  describe(`@libsql/client over ${transport}`, () => {
    let db;
    let client;
    const open = (options = {}) => createClient({ url: dbUrl(transport, db), authToken: process.env.SHOAL_TOKEN, ...options });

    before(async () => {
      db = await newDatabase(`node-${transport}`);
      client = open();
      await client.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, age INTEGER CHECK (age >= 0), avatar BLOB, score REAL)",
      );
      await client.execute(
        "CREATE TABLE posts (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), title TEXT)",
      );
    });
    after(() => client.close());

    it("executes statements and reports rows, columns and counts", async () => {
      const ins = await client.execute({ sql: "INSERT INTO users (name, age, score) VALUES (?, ?, ?)", args: ["ann", 31, 1.5] });
      assert.equal(ins.rowsAffected, 1);
      assert.equal(typeof ins.lastInsertRowid, "bigint");
      const rs = await client.execute({ sql: "SELECT id, name, age, score FROM users WHERE name = ?", args: ["ann"] });
      assert.deepEqual(rs.columns, ["id", "name", "age", "score"]);
      assert.deepEqual(rs.columnTypes, ["INTEGER", "TEXT", "INTEGER", "REAL"]);
      assert.equal(rs.rows.length, 1);
      assert.equal(rs.rows[0].name, "ann");
      assert.equal(rs.rows[0][2], 31);
      assert.equal(rs.rows[0].score, 1.5);
      assert.equal(rs.rows[0].id, Number(ins.lastInsertRowid));
      const none = await client.execute("SELECT * FROM users WHERE 0");
      assert.deepEqual(none.columns, ["id", "name", "age", "avatar", "score"]);
      assert.equal(none.rows.length, 0);
    });

    it("binds positional ?NNN and named :, @, $ arguments", async () => {
      let rs = await client.execute({ sql: "SELECT ?2 AS b, ?1 AS a, ?2 AS again", args: ["x", "y"] });
      assert.deepEqual([rs.rows[0].a, rs.rows[0].b, rs.rows[0].again], ["x", "y", "y"]);
      rs = await client.execute({ sql: "SELECT :a AS a, @b AS b, $c AS c", args: { a: 1, b: "two", c: null } });
      assert.deepEqual([rs.rows[0].a, rs.rows[0].b, rs.rows[0].c], [1, "two", null]);
      rs = await client.execute({ sql: "SELECT :a AS a, @b AS b, $c AS c", args: { ":a": 1, "@b": "two", $c: 3 } });
      assert.deepEqual([rs.rows[0].a, rs.rows[0].b, rs.rows[0].c], [1, "two", 3]);
      rs = await client.execute({ sql: "SELECT ? + ? AS s", args: [2, 3] });
      assert.equal(rs.rows[0].s, 5);
      await assert.rejects(client.execute({ sql: "SELECT ?, ?", args: [1] }), (e) => e instanceof LibsqlError && e.code === "ARGS_INVALID");
    });

    it("round-trips blobs, floats, text and null", async () => {
      const bytes = new Uint8Array([0, 1, 2, 253, 254, 255]);
      await client.execute({ sql: "INSERT INTO users (name, avatar, score) VALUES ('blob', ?, ?)", args: [bytes, -0.25] });
      const rs = await client.execute("SELECT avatar, score, age, typeof(avatar) AS t FROM users WHERE name = 'blob'");
      assert.ok(rs.rows[0].avatar instanceof ArrayBuffer);
      assert.deepEqual(new Uint8Array(rs.rows[0].avatar), bytes);
      assert.equal(rs.rows[0].score, -0.25);
      assert.equal(rs.rows[0].age, null);
      assert.equal(rs.rows[0].t, "blob");
      const text = await client.execute({ sql: "SELECT ? AS s", args: ["žluťoučký 🐟 \u0000 end"] });
      assert.equal(text.rows[0].s, "žluťoučký 🐟 \u0000 end");
    });

    it("keeps 64-bit integers exact in bigint mode and refuses lossy numbers in number mode", async () => {
      const big = 9007199254740993n; // 2^53 + 1
      const bigClient = open({ intMode: "bigint" });
      try {
        await bigClient.execute({ sql: "INSERT INTO users (name, age) VALUES ('big', ?)", args: [big] });
        const rs = await bigClient.execute("SELECT age, 7 AS seven FROM users WHERE name = 'big'");
        assert.equal(rs.rows[0].age, big);
        assert.equal(rs.rows[0].seven, 7n);
        const edge = await bigClient.execute({ sql: "SELECT ? AS lo, ? AS hi", args: [-(2n ** 63n), 2n ** 63n - 1n] });
        assert.equal(edge.rows[0].lo, -(2n ** 63n));
        assert.equal(edge.rows[0].hi, 2n ** 63n - 1n);
      } finally {
        bigClient.close();
      }
      const small = await client.execute("SELECT 42 AS n");
      assert.equal(small.rows[0].n, 42);
      await assert.rejects(client.execute("SELECT age FROM users WHERE name = 'big'"), RangeError);
      const str = open({ intMode: "string" });
      try {
        const rs = await str.execute("SELECT age FROM users WHERE name = 'big'");
        assert.equal(rs.rows[0].age, "9007199254740993");
      } finally {
        str.close();
      }
    });

    it("reports constraint violations with SQLITE_CONSTRAINT", async () => {
      for (const sql of [
        "INSERT INTO users (name) VALUES ('ann')", // UNIQUE
        "INSERT INTO users (name) VALUES (NULL)", // NOT NULL
        "INSERT INTO users (name, age) VALUES ('neg', -1)", // CHECK
        "INSERT INTO posts (user_id, title) VALUES (999999, 'orphan')", // FOREIGN KEY
      ]) {
        await assert.rejects(client.execute(sql), (e) => {
          assert.ok(e instanceof LibsqlError, String(e));
          assert.equal(e.code, "SQLITE_CONSTRAINT", `${sql}: ${e.message}`);
          return true;
        });
      }
      await assert.rejects(client.execute("SELEC 1"), (e) => e.code === "SQLITE_ERROR" && /syntax error/.test(e.message));
      await assert.rejects(client.execute("SELECT * FROM no_such_table"), (e) => e.code === "SQLITE_ERROR");
    });

    for (const mode of ["write", "read", "deferred"]) {
      it(`runs batches in ${mode} mode`, async () => {
        if (mode === "read") {
          const rs = await client.batch(["SELECT count(*) AS n FROM users", "SELECT name FROM users ORDER BY id LIMIT 1"], "read");
          assert.equal(rs.length, 2);
          assert.ok(rs[0].rows[0].n >= 1);
          assert.equal(rs[1].rows[0].name, "ann");
          return;
        }
        const name = `batch-${mode}`;
        const rs = await client.batch(
          [
            { sql: "INSERT INTO users (name) VALUES (?)", args: [name] },
            { sql: "INSERT INTO posts (user_id, title) VALUES (last_insert_rowid(), ?)", args: [`by ${name}`] },
            { sql: "SELECT u.name, p.title FROM posts p JOIN users u ON u.id = p.user_id WHERE u.name = ?", args: [name] },
          ],
          mode,
        );
        assert.equal(rs[0].rowsAffected, 1);
        assert.deepEqual([rs[2].rows[0].name, rs[2].rows[0].title], [name, `by ${name}`]);
      });
    }

    it("rolls a failing batch back as a whole", async () => {
      await assert.rejects(
        client.batch(["INSERT INTO users (name) VALUES ('batch-doomed')", "INSERT INTO users (name) VALUES ('ann')"], "write"),
        (e) => e.code === "SQLITE_CONSTRAINT",
      );
      const rs = await client.execute("SELECT count(*) AS n FROM users WHERE name = 'batch-doomed'");
      assert.equal(rs.rows[0].n, 0);
    });

    it("commits an interactive transaction", async () => {
      const tx = await client.transaction("write");
      try {
        await tx.execute("INSERT INTO users (name) VALUES ('tx-commit')");
        const inside = await tx.execute("SELECT count(*) AS n FROM users WHERE name = 'tx-commit'");
        assert.equal(inside.rows[0].n, 1);
        const rs = await tx.batch(["INSERT INTO users (name) VALUES ('tx-commit-2')", "SELECT 1 AS one"]);
        assert.equal(rs[1].rows[0].one, 1);
        await tx.commit();
      } finally {
        tx.close();
      }
      const rs = await client.execute("SELECT count(*) AS n FROM users WHERE name LIKE 'tx-commit%'");
      assert.equal(rs.rows[0].n, 2);
    });

    it("rolls an interactive transaction back", async () => {
      const tx = await client.transaction("write");
      await tx.execute("INSERT INTO users (name) VALUES ('tx-rollback')");
      await tx.rollback();
      assert.ok(tx.closed);
      const rs = await client.execute("SELECT count(*) AS n FROM users WHERE name = 'tx-rollback'");
      assert.equal(rs.rows[0].n, 0);
    });

    it("keeps a transaction usable after an error inside it", async () => {
      const tx = await client.transaction("write");
      try {
        await tx.execute("INSERT INTO users (name) VALUES ('tx-error-kept')");
        await assert.rejects(tx.execute("INSERT INTO users (name) VALUES ('ann')"), (e) => e.code === "SQLITE_CONSTRAINT");
        await assert.rejects(tx.execute("SELECT * FROM nowhere"), (e) => e.code === "SQLITE_ERROR");
        await tx.execute("INSERT INTO users (name) VALUES ('tx-error-kept-2')");
        await tx.commit();
      } finally {
        tx.close();
      }
      const rs = await client.execute("SELECT count(*) AS n FROM users WHERE name LIKE 'tx-error-kept%'");
      assert.equal(rs.rows[0].n, 2);
    });

    it("upgrades a deferred transaction at its first write", async () => {
      const tx = await client.transaction("deferred");
      try {
        const before = await tx.execute("SELECT count(*) AS n FROM users");
        await tx.execute("INSERT INTO users (name) VALUES ('tx-deferred')");
        const afterRs = await tx.execute("SELECT count(*) AS n FROM users");
        assert.equal(afterRs.rows[0].n, before.rows[0].n + 1);
        await tx.commit();
      } finally {
        tx.close();
      }
      const rs = await client.execute("SELECT count(*) AS n FROM users WHERE name = 'tx-deferred'");
      assert.equal(rs.rows[0].n, 1);
    });

    it("releases the write lock at once when a transaction is closed without commit", async () => {
      // what an ORM does when a transaction callback throws: txn.close(), no ROLLBACK
      await client.execute("CREATE TABLE IF NOT EXISTS locks (who TEXT)");
      const other = open();
      try {
        const tx = await client.transaction("write");
        await tx.execute("INSERT INTO locks VALUES ('closed')");
        tx.close();
        const started = performance.now();
        const next = await other.transaction("write");
        try {
          await next.execute("INSERT INTO locks VALUES ('next')");
          await next.commit();
        } finally {
          next.close();
        }
        const took = performance.now() - started;
        assert.ok(took < 1000, `the next write transaction waited ${took.toFixed(0)} ms (busy_timeout is 5 s)`);
        const rs = await client.execute("SELECT who FROM locks ORDER BY rowid");
        assert.deepEqual(rs.rows.map((r) => r.who), ["next"]);
      } finally {
        other.close();
        await client.execute("DELETE FROM locks");
      }
    });

    if (transport === "ws") {
      it("releases the write lock at once when the client goes away", async () => {
        await client.execute("CREATE TABLE IF NOT EXISTS locks (who TEXT)");
        const leaving = open();
        const tx = await leaving.transaction("write");
        await tx.execute("INSERT INTO locks VALUES ('left')");
        // a second transaction of the same client waits for the lock the first one holds
        const waiting = await leaving.transaction("write");
        const blocked = waiting.execute("INSERT INTO locks VALUES ('left too')").then(() => "ran", (e) => e);
        await new Promise((resolve) => setTimeout(resolve, 200));
        leaving.close(); // the socket closes with both transactions open
        const started = performance.now();
        const next = await client.transaction("write");
        try {
          await next.execute("INSERT INTO locks VALUES ('next')");
          await next.commit();
        } finally {
          next.close();
        }
        const took = performance.now() - started;
        assert.ok(took < 1000, `the next write transaction waited ${took.toFixed(0)} ms (busy_timeout is 5 s)`);
        assert.ok((await blocked) instanceof Error);
        const rs = await client.execute("SELECT who FROM locks ORDER BY rowid");
        assert.deepEqual(rs.rows.map((r) => r.who), ["next"]);
        await client.execute("DELETE FROM locks");
      });
    }

    it("runs a batch of 10,000 inserts (a bulk insert, a migration)", async () => {
      await client.execute("CREATE TABLE bulk (id INTEGER PRIMARY KEY, n INTEGER, label TEXT)");
      const stmts = Array.from({ length: 10000 }, (_, i) => ({ sql: "INSERT INTO bulk (n, label) VALUES (?, ?)", args: [i, `row ${i}`] }));
      const rs = await client.batch(stmts, "write");
      assert.equal(rs.length, 10000);
      assert.ok(rs.every((r) => r.rowsAffected === 1));
      assert.equal(rs[9999].lastInsertRowid, 10000n);
      const count = await client.execute("SELECT count(*) AS n, sum(n) AS total FROM bulk");
      assert.deepEqual([count.rows[0].n, count.rows[0].total], [10000, (9999 * 10000) / 2]);
      await assert.rejects(client.batch([...stmts, "INSERT INTO nowhere VALUES (1)"], "write"), (e) => e.code === "SQLITE_ERROR");
      const after = await client.execute("SELECT count(*) AS n FROM bulk");
      assert.equal(after.rows[0].n, 10000); // all or nothing
    });

    it("runs scripts with executeMultiple, inside and outside transactions", async () => {
      await client.executeMultiple(`
        CREATE TABLE tags (id INTEGER PRIMARY KEY, label TEXT); -- a comment; with a semicolon
        INSERT INTO tags (label) VALUES ('a;b');
        CREATE TRIGGER tags_upper AFTER INSERT ON tags BEGIN
          UPDATE tags SET label = upper(label) WHERE id = new.id;
        END;
        INSERT INTO tags (label) VALUES ('c');
      `);
      const rs = await client.execute("SELECT label FROM tags ORDER BY id");
      assert.deepEqual(rs.rows.map((r) => r.label), ["a;b", "C"]); // the trigger came after the first row
      const tx = await client.transaction("write");
      try {
        await tx.executeMultiple("INSERT INTO tags (label) VALUES ('d'); INSERT INTO tags (label) VALUES ('e');");
        await tx.rollback();
      } finally {
        tx.close();
      }
      const count = await client.execute("SELECT count(*) AS n FROM tags");
      assert.equal(count.rows[0].n, 2);
      await assert.rejects(client.executeMultiple("INSERT INTO tags (label) VALUES ('f'); INSERT INTO nowhere VALUES (1);"));
      const after = await client.execute("SELECT count(*) AS n FROM tags");
      assert.equal(after.rows[0].n, 3); // each statement of a script outside a transaction commits alone
    });

    it("runs migrate() batches", async () => {
      const rs = await client.migrate([
        "CREATE TABLE mig (id INTEGER PRIMARY KEY, note TEXT)",
        { sql: "INSERT INTO mig (note) VALUES (?)", args: ["first"] },
        "SELECT note FROM mig",
      ]);
      assert.equal(rs[2].rows[0].note, "first");
      await assert.rejects(client.migrate(["INSERT INTO mig (note) VALUES ('x')", "INSERT INTO nowhere VALUES (1)"]));
      const count = await client.execute("SELECT count(*) AS n FROM mig");
      assert.equal(count.rows[0].n, 1);
    });

    it("answers concurrent requests on one client", async () => {
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => client.execute({ sql: "SELECT ? AS i", args: [i] })),
      );
      assert.deepEqual(results.map((r) => r.rows[0].i), Array.from({ length: 20 }, (_, i) => i));
    });

    it("lets a read token read but never write", async () => {
      const reader = open({ authToken: await newToken([db], "read") });
      try {
        const rs = await reader.execute("SELECT count(*) AS n FROM users");
        assert.ok(rs.rows[0].n > 0);
        await assert.rejects(reader.execute("INSERT INTO users (name) VALUES ('nope')"), (e) => e.code === "SQLITE_READONLY");
        await assert.rejects(reader.batch(["INSERT INTO users (name) VALUES ('nope')"], "write"), (e) => e.code === "SQLITE_READONLY");
        const tx = await reader.transaction("deferred");
        try {
          await assert.rejects(tx.execute("DELETE FROM users"), (e) => e.code === "SQLITE_READONLY");
        } finally {
          tx.close();
        }
      } finally {
        reader.close();
      }
      const rs = await client.execute("SELECT count(*) AS n FROM users WHERE name = 'nope'");
      assert.equal(rs.rows[0].n, 0);
    });

    it("refuses a token for another database", async () => {
      const other = await newDatabase("node-other");
      const stranger = open({ authToken: await newToken([other], "write") });
      try {
        await assert.rejects(stranger.execute("SELECT 1"), (e) => e instanceof LibsqlError);
      } finally {
        stranger.close();
      }
    });
  });
}
