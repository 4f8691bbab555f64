import { defineConfig } from "vite";

// The window is loaded by Tauri from ui/dist (see src-tauri/tauri.conf.json); relative
// asset paths keep the same build usable from the tests' static server.
export default defineConfig({
  base: "./",
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2021",
    sourcemap: false,
  },
});
