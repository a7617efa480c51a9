//! How MariaDB's errors are classified: a refusal of the data is permanent (counted, never
//! retried), a lock wait or deadlock is transient (retried). Against the real server.

use fieldline_storage::sinks::{Disposition, sql::classify};
use fieldline_testkit as kit;

#[tokio::test]
async fn mariadb_refusals_are_permanent_and_lock_waits_transient() -> anyhow::Result<()> {
    kit::require_mysql()?;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(kit::MYSQL_URL).await?;
    let missing = sqlx::query("SELECT * FROM fieldline_no_such_table")
        .execute(&pool)
        .await
        .expect_err("the table does not exist");
    assert!(
        classify(missing).disposition() == Disposition::Permanent,
        "a refused statement is permanent"
    );

    let table = kit::unique("locks").replace('-', "_");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, v INT) ENGINE=InnoDB"
    )))
    .execute(&pool)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} VALUES (1, 0)"
    )))
    .execute(&pool)
    .await?;
    // One transaction holds the row; another waits for it past its lock wait timeout.
    let mut holder = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT v FROM {table} WHERE id = 1 FOR UPDATE"
    )))
    .execute(&mut *holder)
    .await?;
    let mut waiter = pool.acquire().await?;
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
        .execute(&mut *waiter)
        .await?;
    let waited = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET v = 1 WHERE id = 1"
    )))
    .execute(&mut *waiter)
    .await
    .expect_err("the row is locked");
    let class = classify(waited);
    holder.rollback().await?;
    drop(waiter);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await?;
    assert!(
        class.disposition() == Disposition::Transient,
        "a lock wait timeout is transient: {class:?}"
    );
    Ok(())
}
