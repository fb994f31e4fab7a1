// Appended to a copy of the Snakemake report: walk every category and subcategory through the report's
// own navigation, click each result's "eye" button as a reader would, and record whether Chromium
// decoded the image the report then displays. The outcome goes into the DOM for `--dump-dom`.
(async () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const out = { expected: [], shown: [], errors: [] };
  try {
    for (let i = 0; i < 200 && typeof app === "undefined"; i++) await sleep(50);
    for (const [category, subcategories] of Object.entries(categories)) {
      for (const [subcategory, paths] of Object.entries(subcategories)) {
        out.expected.push(...paths);
        // as the menu does: the category's list, then the subcategory's (a fresh results table)
        app.setView({ navbarMode: "category", category: category });
        await sleep(200);
        app.setView({ navbarMode: "subcategory", category: category, subcategory: subcategory });
        await sleep(200);
        const rows = [...document.querySelectorAll("nav tbody tr")];
        for (const row of rows) {
          row.querySelector("a[iconname='eye']").click();
          await sleep(200);
          const path = app.state.resultPath;
          const img = [...document.querySelectorAll("img")].find((el) => el.src === results[path].data_uri);
          if (img && !img.complete) await new Promise((r) => { img.onload = r; img.onerror = r; });
          out.shown.push({ category, subcategory, row: row.textContent.trim(), path,
                           width: img ? img.naturalWidth : 0, height: img ? img.naturalHeight : 0 });
        }
      }
    }
  } catch (err) {
    out.errors.push(String(err));
  }
  const pre = document.createElement("pre");
  pre.id = "report-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
