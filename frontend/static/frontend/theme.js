// Applies the theme chosen with the dashboard's toggle before the first paint;
// without a choice the page follows the system (prefers-color-scheme).
(function () {
  try {
    var theme = localStorage.getItem("dashboard-theme");
    if (theme === "light" || theme === "dark") {
      document.documentElement.dataset.theme = theme;
    }
  } catch (error) {
    // Storage may be unavailable (private mode): the system theme applies.
  }
})();
