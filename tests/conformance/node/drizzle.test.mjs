// drizzle-orm on @libsql/client (both pinned) against a real Shoal node: a schema with a relation.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { createClient } from "@libsql/client";
import { eq, relations, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/libsql";
import { blob, integer, sqliteTable, text } from "drizzle-orm/sqlite-core";

import { dbUrl, newDatabase } from "./support.mjs";

const authors = sqliteTable("authors", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  name: text("name").notNull().unique(),
  joined: integer("joined", { mode: "timestamp" }),
});

// Blobs stay out of related tables: relational queries nest rows with json_array(), and
// SQLite (3.45 and later) refuses BLOB values in JSON.
const covers = sqliteTable("covers", {
  id: integer("id").primaryKey(),
  image: blob("image", { mode: "buffer" }).notNull(),
});

const books = sqliteTable("books", {
  id: integer("id").primaryKey({ autoIncrement: true }),
  authorId: integer("author_id").notNull().references(() => authors.id),
  title: text("title").notNull(),
  pages: integer("pages"),
});

const authorsRelations = relations(authors, ({ many }) => ({ books: many(books) }));
const booksRelations = relations(books, ({ one }) => ({
  author: one(authors, { fields: [books.authorId], references: [authors.id] }),
}));
const schema = { authors, books, covers, authorsRelations, booksRelations };

for (const transport of ["http", "ws"]) {
  describe(`drizzle-orm over ${transport}`, () => {
    let client;
    let db;

    before(async () => {
      const name = await newDatabase(`drizzle-${transport}`);
      client = createClient({ url: dbUrl(transport, name), authToken: process.env.SHOAL_TOKEN });
      db = drizzle(client, { schema });
      await db.run(sql`CREATE TABLE authors (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, joined INTEGER)`);
      await db.run(sql`CREATE TABLE covers (id INTEGER PRIMARY KEY, image BLOB NOT NULL)`);
      await db.run(sql`CREATE TABLE books (id INTEGER PRIMARY KEY AUTOINCREMENT, author_id INTEGER NOT NULL REFERENCES authors(id), title TEXT NOT NULL, pages INTEGER)`);
    });
    after(() => client.close());

    it("inserts with returning and selects with a join", async () => {
      const joined = new Date("2024-05-01T10:00:00Z");
      const [ann] = await db.insert(authors).values({ name: "Ann", joined }).returning();
      assert.equal(ann.name, "Ann");
      assert.equal(ann.joined.getTime(), joined.getTime());
      await db.insert(covers).values({ id: 1, image: Buffer.from([0, 1, 2, 255]) });
      const [cover] = await db.select().from(covers).where(eq(covers.id, 1));
      assert.deepEqual([...cover.image], [0, 1, 2, 255]);
      await db.insert(books).values([
        { authorId: ann.id, title: "First", pages: 120 },
        { authorId: ann.id, title: "Second", pages: 240 },
      ]);
      const rows = await db
        .select({ author: authors.name, title: books.title })
        .from(books)
        .innerJoin(authors, eq(books.authorId, authors.id))
        .orderBy(books.id);
      assert.deepEqual(rows, [
        { author: "Ann", title: "First" },
        { author: "Ann", title: "Second" },
      ]);
    });

    it("loads relations with the query API", async () => {
      const found = await db.query.authors.findFirst({
        where: eq(authors.name, "Ann"),
        with: { books: { orderBy: (b, { asc }) => [asc(b.id)] } },
      });
      assert.deepEqual(found.books.map((b) => b.title), ["First", "Second"]);
      const book = await db.query.books.findFirst({ where: eq(books.title, "Second"), with: { author: true } });
      assert.equal(book.author.name, "Ann");
    });

    it("updates, aggregates and deletes", async () => {
      await db.update(books).set({ pages: sql`${books.pages} + 1` }).where(eq(books.title, "First"));
      const [total] = await db.select({ pages: sql`sum(${books.pages})`.mapWith(Number) }).from(books);
      assert.equal(total.pages, 361);
      const gone = await db.delete(books).where(eq(books.title, "Second")).returning({ id: books.id });
      assert.equal(gone.length, 1);
    });

    it("commits and rolls back transactions", async () => {
      await db.transaction(async (tx) => {
        const [bob] = await tx.insert(authors).values({ name: "Bob" }).returning();
        await tx.insert(books).values({ authorId: bob.id, title: "Bob's" });
      });
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.insert(authors).values({ name: "Cy" });
          tx.rollback();
        }),
      );
      await assert.rejects(
        db.transaction(async (tx) => {
          await tx.insert(authors).values({ name: "Dee" });
          await tx.insert(authors).values({ name: "Ann" }); // unique violation
        }),
        (e) => /UNIQUE/.test(String(e?.cause?.message ?? e?.message)),
      );
      const names = (await db.select({ name: authors.name }).from(authors).orderBy(authors.id)).map((r) => r.name);
      assert.deepEqual(names, ["Ann", "Bob"]);
    });

    it("runs db.batch atomically", async () => {
      const [, , list] = await db.batch([
        db.insert(authors).values({ name: "Eve" }),
        db.insert(books).values({ authorId: sql`(SELECT id FROM authors WHERE name = 'Eve')`, title: "Eve's" }),
        db.select().from(books).where(eq(books.title, "Eve's")),
      ]);
      assert.equal(list.length, 1);
      await assert.rejects(db.batch([
        db.insert(authors).values({ name: "Fay" }),
        db.insert(authors).values({ name: "Eve" }),
      ]));
      const fay = await db.select().from(authors).where(eq(authors.name, "Fay"));
      assert.equal(fay.length, 0);
    });
  });
}
